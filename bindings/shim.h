/* Small C shims for what bindgen cannot bind: function-like macros, per-lcore variables and
 * constants built with RTE_BIT64. Implemented in shim.c. */
#ifndef VOXEDGE_DPDK_SHIM_H
#define VOXEDGE_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;

/* rte_errno of the calling thread. */
int voxedge_rte_errno(void);
/* rte_pktmbuf_mtod(m, void *): the start of the packet data in the first segment. */
void *voxedge_pktmbuf_mtod(struct rte_mbuf *m);
/* Flag values that are macros over RTE_BIT64(). */
uint64_t voxedge_eth_rss_udp(void);
uint64_t voxedge_eth_tx_offload_ipv4_cksum(void);
uint64_t voxedge_eth_tx_offload_udp_cksum(void);
uint64_t voxedge_eth_rx_offload_checksum(void);
/* Largest port id + 1 (RTE_MAX_ETHPORTS) and RTE_MAX_LCORE, as compiled into the library. */
uint32_t voxedge_max_ethports(void);
uint32_t voxedge_max_lcore(void);

#endif
