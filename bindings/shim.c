#include <rte_config.h>
#include <rte_errno.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>

#include "shim.h"

int voxedge_rte_errno(void) { return rte_errno; }

void *voxedge_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }

uint64_t voxedge_eth_rss_udp(void) { return RTE_ETH_RSS_NONFRAG_IPV4_UDP | RTE_ETH_RSS_NONFRAG_IPV6_UDP; }
uint64_t voxedge_eth_tx_offload_ipv4_cksum(void) { return RTE_ETH_TX_OFFLOAD_IPV4_CKSUM; }
uint64_t voxedge_eth_tx_offload_udp_cksum(void) { return RTE_ETH_TX_OFFLOAD_UDP_CKSUM; }
uint64_t voxedge_eth_rx_offload_checksum(void) { return RTE_ETH_RX_OFFLOAD_CHECKSUM; }

uint32_t voxedge_max_ethports(void) { return RTE_MAX_ETHPORTS; }
uint32_t voxedge_max_lcore(void) { return RTE_MAX_LCORE; }
