#!/usr/bin/env bash
# Host preparation for `voxedge media` with [dataplane] backend = "dpdk" (Debian 12, DPDK 22.11).
#
#   prepare-host.sh hugepages <count-2MiB> [<count-1GiB>]   reserve hugepages, mount hugetlbfs
#   prepare-host.sh bind <pci-addr>...                       hand NICs to vfio-pci
#   prepare-host.sh unbind <pci-addr> <kernel-driver>        give a NIC back to the kernel
#   prepare-host.sh irq-affinity <cpu-list>                  move IRQs to housekeeping CPUs
#   prepare-host.sh kernel-cmdline <isolated-cpu-list>       print the boot parameters to add
#   prepare-host.sh check                                    report what is missing; exit 1 if any
#
# `<subcommand> --help` explains each one; docs/dpdk.md is the step-by-step guide. Every
# subcommand can be run again: it changes only what is not already as asked. hugepages, bind,
# unbind and irq-affinity need root; kernel-cmdline and check run as any user (the systemd unit
# runs check as the service user, so it also tests that user's access).
set -euo pipefail

PROG=${0##*/}
SERVICE_GROUP=voxedge   # group of the service user: gets the hugepage dir and /dev/vfio groups
HUGE_DIR=/dev/hugepages
FILE_PREFIX=voxedge
SYS_NODE=/sys/devices/system/node
SYS_CPU=/sys/devices/system/cpu
SYS_PCI=/sys/bus/pci/devices
PROC_IRQ=/proc/irq
MODULES_LOAD=/etc/modules-load.d/voxedge-dpdk.conf

# ---------------------------------------------------------------------------------------------
# helpers

die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
usage_fail() {
    printf '%s %s: %s\n' "$PROG" "$1" "$2" >&2
    printf "Try '%s %s --help'.\n" "$PROG" "$1" >&2
    exit 2
}
need_root() {
    if [[ $EUID -ne 0 ]]; then die "$1 changes the host: run it as root"; fi
}

# "0-3,8,2" -> "0 1 2 3 8" (ascending, unique). Returns 1 on anything that is not a cpu list.
expand_cpulist() {
    local list=$1 part lo hi c
    local -a parts=() seen=()
    [[ $list =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || return 1
    IFS=, read -ra parts <<<"$list"
    for part in "${parts[@]}"; do
        lo=$((10#${part%-*}))
        hi=$((10#${part#*-}))
        if ((lo > hi || hi > 8191)); then return 1; fi
        for ((c = lo; c <= hi; c++)); do seen[c]=1; done
    done
    printf '%s\n' "${!seen[*]}"
}

# "0 1 2 5" -> "0-2,5"
compress_cpulist() {
    local out="" start="" prev="" c
    for c in $1; do
        if [[ -z $start ]]; then
            start=$c
        elif ((c != prev + 1)); then
            out+="${out:+,}$start"
            if ((prev != start)); then out+="-$prev"; fi
            start=$c
        fi
        prev=$c
    done
    if [[ -n $start ]]; then
        out+="${out:+,}$start"
        if ((prev != start)); then out+="-$prev"; fi
    fi
    printf '%s\n' "$out"
}

# Expanded contents of a sysfs cpu-list file; empty when the file is absent, empty or "(null)".
cpulist_file() {
    local v=""
    if [[ -r $1 ]]; then v=$(<"$1"); fi
    v=${v//[[:space:]]/}
    if [[ -n $v && $v != "(null)" ]]; then expand_cpulist "$v" || true; fi
}

in_set() { [[ " $2 " == *" $1 "* ]]; }
set_minus() {
    local c out=()
    for c in $1; do
        if ! in_set "$c" "$2"; then out+=("$c"); fi
    done
    printf '%s\n' "${out[*]}"
}
set_subset() {
    local c
    for c in $1; do
        if ! in_set "$c" "$2"; then return 1; fi
    done
    return 0
}
set_intersects() {
    local c
    for c in $1; do
        if in_set "$c" "$2"; then return 0; fi
    done
    return 1
}

# A cpu list argument: must parse and name online CPUs only. Prints the expanded list.
parse_online_cpus() {
    local sub=$1 list=$2 cpus online bad
    cpus=$(expand_cpulist "$list") || usage_fail "$sub" "not a cpu list: '$list' (e.g. 2-9 or 0,1,10-15)"
    online=$(cpulist_file "$SYS_CPU/online")
    bad=$(set_minus "$cpus" "$online")
    if [[ -n $bad ]]; then
        usage_fail "$sub" "cpu(s) $(compress_cpulist "$bad") are not online (online: $(compress_cpulist "$online"))"
    fi
    printf '%s\n' "$cpus"
}

# "0 1 10" -> "00000403": the comma-separated 32-bit hex words of /proc/irq/*/smp_affinity.
cpulist_to_mask() {
    local c max=0 i out=""
    local -a words=()
    for c in $1; do
        if ((c > max)); then max=$c; fi
    done
    for ((i = 0; i <= max / 32; i++)); do words[i]=0; done
    for c in $1; do words[c / 32]=$((words[c / 32] | (1 << (c % 32)))); done
    for ((i = max / 32; i >= 0; i--)); do
        out+=$(printf '%08x' "${words[i]}")
        if ((i > 0)); then out+=","; fi
    done
    printf '%s\n' "$out"
}

# 2048 -> "2MiB", 1048576 -> "1GiB"
size_label() {
    if (($1 >= 1048576)); then
        printf '%sGiB\n' $(($1 / 1048576))
    elif (($1 >= 1024)); then
        printf '%sMiB\n' $(($1 / 1024))
    else
        printf '%skB\n' "$1"
    fi
}

numa_nodes() {
    local n
    for n in "$SYS_NODE"/node[0-9]*; do
        if [[ -d $n ]]; then printf '%s\n' "$n"; fi
    done
}

# Hugepage pool directories for one page size (kB): one per NUMA node, or the global pool on a
# kernel without NUMA.
pool_dirs() {
    local kb=$1 n found=0
    while read -r n; do
        found=1
        printf '%s\n' "$n/hugepages/hugepages-${kb}kB"
    done < <(numa_nodes)
    if ((found == 0)); then printf '%s\n' "/sys/kernel/mm/hugepages/hugepages-${kb}kB"; fi
}
pool_name() {
    case $1 in
        "$SYS_NODE"/*) local p=${1#"$SYS_NODE"/}; printf '%s\n' "${p%%/*}" ;;
        *) printf 'all\n' ;;
    esac
}

default_hugepage_kb() {
    local k v
    while read -r k v _; do
        if [[ $k == Hugepagesize: ]]; then printf '%s\n' "$v"; return 0; fi
    done </proc/meminfo
    printf '2048\n'
}

# Page size (kB) served by the hugetlbfs mounted at $1; nothing when none is mounted there.
hugetlbfs_pagesize() {
    local mnt type opts o ps="" found=0 n
    local -a ol=()
    while read -r _ mnt type opts _; do
        if [[ $mnt != "$1" || $type != hugetlbfs ]]; then continue; fi
        found=1
        ps=""
        IFS=, read -ra ol <<<"$opts"
        for o in "${ol[@]}"; do
            case $o in pagesize=*) ps=${o#pagesize=} ;; esac
        done
    done </proc/mounts
    if ((found == 0)); then return 0; fi
    if [[ -z $ps ]]; then default_hugepage_kb; return 0; fi
    n=${ps%[KkMmGg]}
    case $ps in
        *[Kk]) printf '%s\n' "$n" ;;
        *[Mm]) printf '%s\n' $((n * 1024)) ;;
        *[Gg]) printf '%s\n' $((n * 1048576)) ;;
        *) printf '%s\n' $((ps / 1024)) ;;
    esac
}

norm_pci() {
    local a=${1,,}
    if [[ $a =~ ^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$ ]]; then a="0000:$a"; fi
    [[ $a =~ ^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$ ]] || return 1
    printf '%s\n' "$a"
}
pci_driver() {
    if [[ -L $SYS_PCI/$1/driver ]]; then basename "$(readlink -f "$SYS_PCI/$1/driver")"; fi
}
pci_group() {
    if [[ -L $SYS_PCI/$1/iommu_group ]]; then basename "$(readlink -f "$SYS_PCI/$1/iommu_group")"; fi
}
# Kernel interfaces of a PCI device (also those one level down, as virtio-pci has them).
pci_netifs() {
    local n dev
    for n in /sys/class/net/*; do
        [[ -e $n/device ]] || continue
        dev=$(readlink -f "$n/device")
        if [[ $dev == */"$1" || $dev == */"$1"/* ]]; then printf '%s\n' "${n##*/}"; fi
    done
}

find_devbind() {
    local c
    for c in "${DPDK_DEVBIND:-}" dpdk-devbind.py dpdk-devbind /usr/share/dpdk/usertools/dpdk-devbind.py; do
        if [[ -n $c ]] && command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}
need_devbind() {
    find_devbind || die "dpdk-devbind.py not found: apt-get install dpdk (or set DPDK_DEVBIND=/path/to/dpdk-devbind.py)"
}

# Processes holding /dev/vfio/<group> open, as "pid(comm) ...".
vfio_group_users() {
    local fd pid out=()
    for fd in /proc/[0-9]*/fd/*; do
        if [[ $(readlink "$fd" 2>/dev/null || true) == "/dev/vfio/$1" ]]; then
            pid=${fd#/proc/}
            pid=${pid%%/*}
            out+=("$pid($(cat "/proc/$pid/comm" 2>/dev/null || echo '?'))")
        fi
    done
    printf '%s\n' "${out[*]}"
}

group_exists() { getent group "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------
# hugepages

help_hugepages() {
    cat <<EOF
Usage: $PROG hugepages [--group NAME] [--dir DIR] <count-2MiB> [<count-1GiB>]

Reserves <count-2MiB> 2 MiB pages and <count-1GiB> 1 GiB pages on EACH NUMA node
(/sys/devices/system/node/node*/hugepages/*/nr_hugepages), mounts hugetlbfs at DIR
(default $HUGE_DIR) if nothing is mounted there, and lets group NAME (default
$SERVICE_GROUP, if it exists) create hugepage files in DIR (mode 1770), so that the
service can run without root. Prints what it changed.

A count of '-' leaves that page size as it is (e.g. '- -' when the kernel command line
already reserves 1 GiB pages and only the mount and its permissions are wanted). Without
<count-1GiB>, 1 GiB pages are left as they are.

1 GiB pages reserved at run time often fail on a host that has been up for a while (memory
is fragmented); reserve them at boot instead (see '$PROG kernel-cmdline --help').
Reservations made here do not survive a reboot: run this again at boot (docs/dpdk.md,
"Surviving a reboot"). Exit status 1 when the kernel gave fewer pages than asked.

Example (4 GiB per node for memory_mb = [4096, 4096]):  $PROG hugepages 2048
EOF
}

reserve_pages() {
    local kb=$1 want=$2 label dir f cur got rc=0
    label=$(size_label "$kb")
    if [[ $want == - ]]; then
        echo "$label pages: left as they are"
        return 0
    fi
    while read -r dir; do
        f=$dir/nr_hugepages
        if [[ ! -e $f ]]; then
            if ((want > 0)); then
                echo "$(pool_name "$dir"): the kernel has no $label pages (1 GiB pages need the CPU flag pdpe1gb)"
                rc=1
            fi
            continue
        fi
        cur=$(<"$f")
        if ((cur == want)); then
            echo "$(pool_name "$dir"): $label pages: $cur (unchanged)"
            continue
        fi
        { printf '%s\n' "$want" >"$f"; } 2>/dev/null || true
        got=$(<"$f")
        if ((got == want)); then
            echo "$(pool_name "$dir"): $label pages: $cur -> $got"
        else
            echo "$(pool_name "$dir"): $label pages: asked for $want, the kernel gave $got"
            rc=1
        fi
    done < <(pool_dirs "$kb")
    return "$rc"
}

cmd_hugepages() {
    local group=$SERVICE_GROUP dir=$HUGE_DIR v ps mode total short=0
    local -a args=()
    while (($#)); do
        case $1 in
            -h | --help) help_hugepages; return 0 ;;
            --group) [[ $# -ge 2 ]] || usage_fail hugepages "--group needs a name"; group=$2; shift 2 ;;
            --dir) [[ $# -ge 2 ]] || usage_fail hugepages "--dir needs a path"; dir=$2; shift 2 ;;
            --) shift; args+=("$@"); break ;;
            -?*) usage_fail hugepages "unknown option $1" ;;
            *) args+=("$1"); shift ;;
        esac
    done
    if ((${#args[@]} < 1 || ${#args[@]} > 2)); then
        usage_fail hugepages "expected <count-2MiB> [<count-1GiB>]"
    fi
    if ((${#args[@]} == 1)); then args+=(-); fi
    for v in "${args[@]}"; do
        [[ $v == - || $v =~ ^[0-9]+$ ]] || usage_fail hugepages "a page count is a number or '-', not '$v'"
    done
    need_root hugepages

    reserve_pages 2048 "${args[0]}" || short=1
    reserve_pages 1048576 "${args[1]}" || short=1

    ps=$(hugetlbfs_pagesize "$dir")
    if [[ -n $ps ]]; then
        echo "$dir: hugetlbfs already mounted ($(size_label "$ps") pages)"
    else
        mkdir -p "$dir"
        mount -t hugetlbfs -o nosuid,nodev hugetlbfs "$dir"
        ps=$(hugetlbfs_pagesize "$dir")
        echo "$dir: mounted hugetlbfs ($(size_label "$ps") pages, the kernel's default size)"
    fi
    total=0
    while read -r v; do
        if [[ -r $v/nr_hugepages ]]; then total=$((total + $(<"$v/nr_hugepages"))); fi
    done < <(pool_dirs "$ps")
    if ((total == 0)); then
        warn "$dir serves $(size_label "$ps") pages and none are reserved: EAL will find no memory there"
    fi

    if group_exists "$group"; then
        mode=$(stat -c '%G %a' "$dir")
        if [[ $mode == "$group 1770" ]]; then
            echo "$dir: group $group, mode 1770 (unchanged)"
        else
            chgrp "$group" "$dir"
            chmod 1770 "$dir"
            echo "$dir: group $group may create hugepage files (mode 1770)"
        fi
    else
        echo "$dir: group $group does not exist, permissions left as they are (create the service user first)"
    fi

    if ((short)); then
        die "fewer hugepages than asked (see above)"
    fi
}

# ---------------------------------------------------------------------------------------------
# bind / unbind

help_bind() {
    cat <<EOF
Usage: $PROG bind [--force] [--group NAME] <pci-addr>...

Hands each network device to vfio-pci so that DPDK can drive it:
  1. loads vfio-pci and lists it in $MODULES_LOAD (so it loads at boot,
     before voxedge-media-dpdk.service resolves its DeviceAllow= entries);
  2. refuses (unless --force) when a device's kernel interface is up or has routes:
     binding it would cut whatever uses it, possibly your SSH session;
  3. runs 'dpdk-devbind.py --bind=vfio-pci' for the devices not bound yet;
  4. gives group NAME (default $SERVICE_GROUP, if it exists) read-write access to each
     device's /dev/vfio/<iommu-group>, so that the service can run without root;
  5. shows 'dpdk-devbind.py --status-dev net'.

<pci-addr> is as listed by 'dpdk-devbind.py --status-dev net' or 'lspci -D' (0000:3b:00.0;
the 0000: domain may be left out). Devices already on vfio-pci are left alone. The binding
does not survive a reboot: run this again at boot (docs/dpdk.md, "Surviving a reboot").

Example:  $PROG bind 0000:3b:00.0 0000:3b:00.1
EOF
}

persist_vfio_module() {
    if [[ -f $MODULES_LOAD ]] && grep -qx 'vfio-pci' "$MODULES_LOAD"; then
        return 0
    fi
    mkdir -p "${MODULES_LOAD%/*}"
    printf '# Written by %s: voxedge-media-dpdk.service needs vfio-pci loaded at boot.\nvfio-pci\n' \
        "$PROG" >"$MODULES_LOAD"
    echo "wrote $MODULES_LOAD (vfio-pci now loads at boot)"
}

grant_vfio_group() {
    local g=$1 group=$2 node=/dev/vfio/$1 i cur
    for ((i = 0; i < 50; i++)); do
        if [[ -e $node ]]; then break; fi
        sleep 0.1
    done
    if [[ ! -e $node ]]; then
        warn "$node did not appear after binding"
        return 0
    fi
    if ! group_exists "$group"; then
        echo "$node: group $group does not exist, left root-only"
        return 0
    fi
    cur=$(stat -c '%G %a' "$node")
    if [[ $cur == "$group 660" ]]; then
        echo "$node: group $group, mode 0660 (unchanged)"
    else
        chgrp "$group" "$node"
        chmod 0660 "$node"
        echo "$node: group $group may use it (mode 0660)"
    fi
}

cmd_bind() {
    local force=0 group=$SERVICE_GROUP devbind a i drv g ifc flags state routes member mdrv refuse=0
    local -a addrs=() todo=() groups=()
    while (($#)); do
        case $1 in
            -h | --help) help_bind; return 0 ;;
            --force) force=1; shift ;;
            --group) [[ $# -ge 2 ]] || usage_fail bind "--group needs a name"; group=$2; shift 2 ;;
            --) shift; addrs+=("$@"); break ;;
            -?*) usage_fail bind "unknown option $1" ;;
            *) addrs+=("$1"); shift ;;
        esac
    done
    ((${#addrs[@]})) || usage_fail bind "expected at least one <pci-addr>"
    for i in "${!addrs[@]}"; do
        a=$(norm_pci "${addrs[i]}") || usage_fail bind "not a PCI address: '${addrs[i]}' (e.g. 0000:3b:00.0)"
        [[ -e $SYS_PCI/$a ]] || die "$a: no such PCI device (lspci -D lists them)"
        addrs[i]=$a
    done
    need_root bind
    devbind=$(need_devbind) || exit 1

    # Look at every device before changing anything.
    for a in "${addrs[@]}"; do
        drv=$(pci_driver "$a")
        if [[ $drv == vfio-pci ]]; then
            echo "$a: already bound to vfio-pci"
            g=$(pci_group "$a")
            if [[ -n $g ]]; then groups+=("$g"); fi
            continue
        fi
        if [[ $drv == mlx5_core && $force -eq 0 ]]; then
            echo "$a: NVIDIA/Mellanox ConnectX: DPDK drives it through mlx5_core, do not bind it (list it in dpdk.devices)"
            continue
        fi
        g=$(pci_group "$a")
        if [[ -z $g ]]; then
            die "$a has no IOMMU group: the IOMMU is off (BIOS VT-d/AMD-Vi, and see '$PROG kernel-cmdline --help')"
        fi
        while read -r ifc; do
            flags=$(<"/sys/class/net/$ifc/flags")
            routes=""
            if command -v ip >/dev/null 2>&1; then
                routes=$( { ip -o route show dev "$ifc"; ip -o -6 route show dev "$ifc"; } 2>/dev/null || true)
            fi
            if ((flags & 1)) || [[ -n $routes ]]; then
                if ((force)); then
                    warn "$a ($ifc) is up or has routes; binding anyway (--force)"
                else
                    state=down
                    if ((flags & 1)); then state=up; fi
                    echo "$a: refusing: its interface $ifc is $state${routes:+ and has routes}:"
                    if [[ -n $routes ]]; then sed 's/^/    /' <<<"$routes"; fi
                    echo "    take it down first (ip link set $ifc down; remove it from /etc/network/interfaces), or use --force"
                    refuse=1
                fi
            fi
        done < <(pci_netifs "$a")
        for member in "/sys/kernel/iommu_groups/$g/devices"/*; do
            member=${member##*/}
            if [[ $member == "$a" ]] || in_set "$member" "${addrs[*]}"; then continue; fi
            mdrv=$(pci_driver "$member")
            case $mdrv in
                "" | vfio-pci | pcieport) ;;
                *) warn "$a shares IOMMU group $g with $member (driver $mdrv): vfio needs every device of the group on vfio-pci or on no driver" ;;
            esac
        done
        todo+=("$a")
        groups+=("$g")
    done
    if ((refuse)); then
        die "nothing bound"
    fi

    if [[ ! -d /sys/bus/pci/drivers/vfio-pci ]]; then
        modprobe vfio-pci
        echo "loaded vfio-pci"
    fi
    persist_vfio_module

    if ((${#todo[@]})); then
        if ((force)); then
            "$devbind" --force --bind=vfio-pci "${todo[@]}"
        else
            "$devbind" --bind=vfio-pci "${todo[@]}"
        fi
        for a in "${todo[@]}"; do
            [[ $(pci_driver "$a") == vfio-pci ]] || die "$a: dpdk-devbind.py did not bind it to vfio-pci (see its output above)"
            echo "$a: bound to vfio-pci"
        done
        if command -v udevadm >/dev/null 2>&1; then udevadm settle || true; fi
    fi
    for g in $(printf '%s\n' "${groups[@]}" | sort -un); do
        grant_vfio_group "$g" "$group"
    done
    echo
    "$devbind" --status-dev net
}

help_unbind() {
    cat <<EOF
Usage: $PROG unbind [--force] <pci-addr> <kernel-driver>

Gives a device back to its kernel driver (ice, i40e, ixgbe, bnxt_en, ...; the 'unused='
column of 'dpdk-devbind.py --status-dev net' names it) with 'dpdk-devbind.py --bind', after
loading that driver, and shows the status. Refuses while a process (voxedge) holds the
device's /dev/vfio group open, unless --force: stop voxedge-media-dpdk.service first.

Example:  $PROG unbind 0000:3b:00.0 ice
EOF
}

cmd_unbind() {
    local force=0 devbind a drv cur g users
    local -a args=()
    while (($#)); do
        case $1 in
            -h | --help) help_unbind; return 0 ;;
            --force) force=1; shift ;;
            --) shift; args+=("$@"); break ;;
            -?*) usage_fail unbind "unknown option $1" ;;
            *) args+=("$1"); shift ;;
        esac
    done
    ((${#args[@]} == 2)) || usage_fail unbind "expected <pci-addr> <kernel-driver>"
    a=$(norm_pci "${args[0]}") || usage_fail unbind "not a PCI address: '${args[0]}'"
    drv=${args[1]}
    [[ $drv =~ ^[A-Za-z0-9_-]+$ ]] || usage_fail unbind "not a driver name: '$drv'"
    [[ -e $SYS_PCI/$a ]] || die "$a: no such PCI device"
    need_root unbind
    devbind=$(need_devbind) || exit 1

    cur=$(pci_driver "$a")
    if [[ $cur == "$drv" ]]; then
        echo "$a: already bound to $drv"
    else
        if [[ $cur == vfio-pci ]]; then
            g=$(pci_group "$a")
            users=$(vfio_group_users "$g")
            if [[ -n $users ]]; then
                if ((force)); then
                    warn "/dev/vfio/$g is open by $users; unbinding anyway (--force; the kernel waits for them to let go)"
                else
                    die "$a: /dev/vfio/$g is open by $users: stop it first (systemctl stop voxedge-media-dpdk), or use --force"
                fi
            fi
        fi
        if [[ ! -d /sys/bus/pci/drivers/$drv ]]; then
            modprobe "$drv" || die "cannot load kernel driver $drv"
        fi
        "$devbind" --bind="$drv" "$a"
        [[ $(pci_driver "$a") == "$drv" ]] || die "$a: not bound to $drv (see dpdk-devbind.py's output above)"
        echo "$a: bound to $drv"
    fi
    echo
    "$devbind" --status-dev net
}

# ---------------------------------------------------------------------------------------------
# irq-affinity

help_irq_affinity() {
    cat <<EOF
Usage: $PROG irq-affinity <housekeeping-cpu-list>

Moves every IRQ that may fire on a CPU outside <housekeeping-cpu-list> (i.e. on the isolated
worker cores) to that list, through /proc/irq/*/smp_affinity_list, and sets
/proc/irq/default_smp_affinity for IRQs created later. IRQs already inside the list are left
alone. The kernel refuses to move some (managed and per-CPU interrupts): those are skipped and
counted. Prints how many were moved, already in place and refused.

irqbalance, if it runs, moves IRQs back: set IRQBALANCE_BANNED_CPULIST=<isolated list> in
/etc/default/irqbalance, or stop it. Not persistent: run again at boot, or boot with
irqaffinity=<housekeeping-cpu-list> (see kernel-cmdline).

Example (workers on 2-9 of a 32-CPU host):  $PROG irq-affinity 0-1,10-31
EOF
}

cmd_irq_affinity() {
    local list cpus isolated d f irq cur moved=0 already=0 refused=0 mask
    local -a args=() refused_irqs=()
    while (($#)); do
        case $1 in
            -h | --help) help_irq_affinity; return 0 ;;
            --) shift; args+=("$@"); break ;;
            -?*) usage_fail irq-affinity "unknown option $1" ;;
            *) args+=("$1"); shift ;;
        esac
    done
    ((${#args[@]} == 1)) || usage_fail irq-affinity "expected one <housekeeping-cpu-list>"
    cpus=$(parse_online_cpus irq-affinity "${args[0]}") || exit 2
    list=$(compress_cpulist "$cpus")
    need_root irq-affinity

    isolated=$(cpulist_file "$SYS_CPU/isolated")
    if [[ -n $isolated ]] && set_intersects "$cpus" "$isolated"; then
        warn "the housekeeping list $list includes isolated cpus $(compress_cpulist "$isolated")"
    fi

    for d in "$PROC_IRQ"/[0-9]*; do
        f=$d/smp_affinity_list
        [[ -f $f ]] || continue
        irq=${d##*/}
        cur=$(cpulist_file "$f")
        if [[ -n $cur ]] && set_subset "$cur" "$cpus"; then
            already=$((already + 1))
            continue
        fi
        if { printf '%s\n' "$list" >"$f"; } 2>/dev/null; then
            moved=$((moved + 1))
        else
            refused=$((refused + 1))
            refused_irqs+=("$irq")
        fi
    done
    mask=$(cpulist_to_mask "$cpus")
    if { printf '%s\n' "$mask" >"$PROC_IRQ/default_smp_affinity"; } 2>/dev/null; then
        echo "default affinity for new IRQs: $list (mask $mask)"
    else
        warn "could not set $PROC_IRQ/default_smp_affinity to $mask"
    fi
    echo "IRQs moved to $list: $moved"
    echo "IRQs already there: $already"
    echo "IRQs the kernel refused to move (managed or per-CPU, skipped): $refused${refused_irqs[*]:+ (${refused_irqs[*]})}"
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet irqbalance 2>/dev/null; then
        warn "irqbalance is running and will move IRQs back: set IRQBALANCE_BANNED_CPULIST in /etc/default/irqbalance, or systemctl disable --now irqbalance"
    fi
}

# ---------------------------------------------------------------------------------------------
# kernel-cmdline

help_kernel_cmdline() {
    cat <<EOF
Usage: $PROG kernel-cmdline [--hugepages-1g N] <isolated-cpu-list>

PRINTS (changes nothing) the kernel parameters to add to GRUB_CMDLINE_LINUX:
  isolcpus=, nohz_full=, rcu_nocbs=   keep the scheduler, the tick and RCU callbacks off the
                                      worker cores (<isolated-cpu-list>: dataplane.cores)
  default_hugepagesz=1G hugepagesz=1G hugepages=N
                                      reserve N 1 GiB pages at boot, before memory fragments;
                                      the kernel spreads them evenly over the NUMA nodes
                                      (default N: 4 per node; size it to the sum of
                                      dpdk.memory_mb plus headroom)
  iommu=pt intel_iommu=on             IOMMU on for vfio-pci, pass-through for kernel devices
                                      (AMD: iommu=pt only; AMD-Vi is on when the BIOS enables it)
and how to apply them (update-grub, reboot). Also shows which are already on the running
kernel's command line. Leave CPU 0 and dpdk.main_lcore out of the isolated list.

Example:  $PROG kernel-cmdline 2-9
EOF
}

cmd_kernel_cmdline() {
    local n1g="" cpus list online housekeeping nodes vendor iommu params p key current
    local -a args=()
    while (($#)); do
        case $1 in
            -h | --help) help_kernel_cmdline; return 0 ;;
            --hugepages-1g) [[ $# -ge 2 ]] || usage_fail kernel-cmdline "--hugepages-1g needs a count"; n1g=$2; shift 2 ;;
            --) shift; args+=("$@"); break ;;
            -?*) usage_fail kernel-cmdline "unknown option $1" ;;
            *) args+=("$1"); shift ;;
        esac
    done
    ((${#args[@]} == 1)) || usage_fail kernel-cmdline "expected one <isolated-cpu-list>"
    cpus=$(parse_online_cpus kernel-cmdline "${args[0]}") || exit 2
    list=$(compress_cpulist "$cpus")
    online=$(cpulist_file "$SYS_CPU/online")
    housekeeping=$(set_minus "$online" "$cpus")
    [[ -n $housekeeping ]] || usage_fail kernel-cmdline "isolating every CPU leaves none for the kernel and the control plane"
    nodes=$(numa_nodes | wc -l)
    if ((nodes == 0)); then nodes=1; fi
    if [[ -z $n1g ]]; then n1g=$((4 * nodes)); fi
    [[ $n1g =~ ^[0-9]+$ ]] || usage_fail kernel-cmdline "--hugepages-1g takes a number, not '$n1g'"

    vendor=$(grep -m1 '^vendor_id' /proc/cpuinfo 2>/dev/null | awk '{print $3}' || true)
    case $vendor in
        AuthenticAMD) iommu="iommu=pt" ;;
        *) iommu="iommu=pt intel_iommu=on" ;;
    esac
    params="isolcpus=$list nohz_full=$list rcu_nocbs=$list default_hugepagesz=1G hugepagesz=1G hugepages=$n1g $iommu"

    echo "Add to GRUB_CMDLINE_LINUX (this command changes nothing):"
    echo
    echo "    $params"
    echo
    echo "Optional, places IRQs on the housekeeping CPUs from boot on:"
    echo
    echo "    irqaffinity=$(compress_cpulist "$housekeeping")"
    echo
    echo "Either edit GRUB_CMDLINE_LINUX=\"...\" in /etc/default/grub, or keep it apart in a file"
    echo "that update-grub reads after /etc/default/grub:"
    echo
    echo "    mkdir -p /etc/default/grub.d"
    echo "    echo 'GRUB_CMDLINE_LINUX=\"\$GRUB_CMDLINE_LINUX $params\"' > /etc/default/grub.d/voxedge-dpdk.cfg"
    echo
    echo "then run 'update-grub' and reboot. Afterwards 'cat /proc/cmdline' shows them and"
    echo "'$PROG check' reports the isolated CPUs and hugepages."
    echo
    if in_set 0 "$cpus"; then
        warn "CPU 0 is in the isolated list: the kernel keeps housekeeping work on it; isolate other cores"
    fi
    if ! grep -qw pdpe1gb /proc/cpuinfo 2>/dev/null; then
        warn "this CPU has no pdpe1gb flag (no 1 GiB pages): drop the three hugepage parameters and use '$PROG hugepages <count-2MiB>'"
    fi
    if [[ $vendor == AuthenticAMD ]]; then
        echo "AMD CPU: intel_iommu= does not apply; enable the IOMMU (AMD-Vi) in the BIOS."
    fi
    echo "On the running kernel (/proc/cmdline):"
    current=" $(</proc/cmdline) "
    for p in $params; do
        key=${p%%=*}
        if [[ $current == *" $p "* ]]; then
            echo "    $p: present"
        elif [[ $current == *" $key="* ]]; then
            local v=${current#*" $key="}
            echo "    $p: differs (now $key=${v%% *})"
        else
            echo "    $p: absent"
        fi
    done
}

# ---------------------------------------------------------------------------------------------
# check

help_check() {
    cat <<EOF
Usage: $PROG check [options] [<pci-addr>...]

Reports, without changing anything:
  - hugepages per NUMA node (total, free), the hugetlbfs mount at the hugepage directory and
    whether this user can create files there;
  - vfio-pci loaded, IOMMU groups present, the devices bound to vfio-pci
    ('dpdk-devbind.py --status-dev net'), whether this user can open their /dev/vfio groups;
  - isolated CPUs (/sys/devices/system/cpu/isolated), nohz_full, IRQs on isolated CPUs.
Ends with a list of problems and exits 1 if there is any (warnings alone exit 0).
voxedge-media-dpdk.service runs it as ExecStartPre, as the service user.

Options:
  <pci-addr>...        these devices must be bound to vfio-pci (default: at least one is);
                       not for NVIDIA ConnectX ports, which stay on mlx5_core (use --no-vfio)
  --huge-dir DIR       hugepage directory, as dpdk.huge_dir (default $HUGE_DIR)
  --file-prefix P      as dpdk.file_prefix (default $FILE_PREFIX): pages held by hugepage
                       files a previous run left behind count as available (EAL removes them)
  --memory-mb A,B,...  as dpdk.memory_mb: each NUMA node must have that much free
  --cores LIST         as dataplane.cores: warn about cores that are not isolated / nohz_full
  --no-huge            skip the hugepage checks (dpdk.no_huge = true)
  --no-vfio            skip the vfio checks (net_af_xdp or other vdevs only)
  --strict             treat warnings as problems
EOF
}

cmd_check() {
    local dir=$HUGE_DIR prefix=$FILE_PREFIX memory_mb="" cores="" no_huge=0 no_vfio=0 strict=0
    local me a i v ps dirp node free total kb label stale_kb=0 free_all=0 devbind g f
    local isolated nohz nohz_present=0 online c irq_hits=0 capeff=0 memlock
    local -a addrs=() problems=() warnings=() mem=() bound=() free_kb=() nodes=() targets=()
    while (($#)); do
        case $1 in
            -h | --help) help_check; return 0 ;;
            --huge-dir) [[ $# -ge 2 ]] || usage_fail check "--huge-dir needs a path"; dir=$2; shift 2 ;;
            --file-prefix) [[ $# -ge 2 ]] || usage_fail check "--file-prefix needs a value"; prefix=$2; shift 2 ;;
            --memory-mb) [[ $# -ge 2 ]] || usage_fail check "--memory-mb needs a list"; memory_mb=$2; shift 2 ;;
            --cores) [[ $# -ge 2 ]] || usage_fail check "--cores needs a cpu list"; cores=$2; shift 2 ;;
            --no-huge) no_huge=1; shift ;;
            --no-vfio) no_vfio=1; shift ;;
            --strict) strict=1; shift ;;
            --) shift; addrs+=("$@"); break ;;
            -?*) usage_fail check "unknown option $1" ;;
            *) addrs+=("$1"); shift ;;
        esac
    done
    for i in "${!addrs[@]}"; do
        a=$(norm_pci "${addrs[i]}") || usage_fail check "not a PCI address: '${addrs[i]}'"
        addrs[i]=$a
    done
    if [[ -n $memory_mb ]]; then
        [[ $memory_mb =~ ^[0-9]+(,[0-9]+)*$ ]] || usage_fail check "--memory-mb takes MiB per node, e.g. 4096,4096"
        IFS=, read -ra mem <<<"$memory_mb"
    fi
    if [[ -n $cores ]]; then
        cores=$(expand_cpulist "$cores") || usage_fail check "--cores takes a cpu list, e.g. 2-9"
    fi
    me=$(id -un)

    # --- hugepages
    echo "== hugepages"
    if ((no_huge)); then
        echo "   skipped (--no-huge)"
    else
        ps=$(hugetlbfs_pagesize "$dir")
        if [[ -z $ps ]]; then
            problems+=("no hugetlbfs mounted at $dir ($PROG hugepages)")
            ps=$(default_hugepage_kb)
        else
            echo "   $dir: hugetlbfs, $(size_label "$ps") pages"
            if ((EUID != 0)) && ! [[ -w $dir && -x $dir ]]; then
                problems+=("$dir is not writable by $me: EAL cannot create its hugepage files ($PROG hugepages gives group $SERVICE_GROUP mode 1770)")
            fi
        fi
        label=$(size_label "$ps")
        while read -r node; do nodes+=("$node"); done < <(numa_nodes)
        for node in "${nodes[@]}"; do
            for dirp in "$node"/hugepages/hugepages-*kB; do
                [[ -d $dirp ]] || continue
                kb=${dirp##*hugepages-}
                kb=${kb%kB}
                total=$(<"$dirp/nr_hugepages")
                free=$(<"$dirp/free_hugepages")
                echo "   ${node##*/}: $(size_label "$kb") pages: $total reserved, $free free"
                if ((kb == ps)); then
                    free_kb[${node##*node}]=$((free * kb))
                    free_all=$((free_all + free * kb))
                fi
            done
        done
        if ((${#nodes[@]} == 0)) && [[ -d /sys/kernel/mm/hugepages/hugepages-${ps}kB ]]; then
            free=$(<"/sys/kernel/mm/hugepages/hugepages-${ps}kB/free_hugepages")
            echo "   all: $label pages: $free free"
            free_kb[0]=$((free * ps))
            free_all=$((free * ps))
        fi
        for f in "$dir/${prefix}map_"*; do
            if [[ -f $f ]]; then stale_kb=$((stale_kb + $(stat -c %s "$f") / 1024)); fi
        done
        if ((stale_kb > 0)); then
            echo "   $((stale_kb / 1024)) MiB held by hugepage files of a previous run (${prefix}map_*): EAL removes them at start"
        fi
        if ((free_all + stale_kb == 0)); then
            problems+=("no free $label hugepages on any NUMA node ($PROG hugepages, or hugepages= on the kernel command line)")
        fi
        for i in "${!mem[@]}"; do
            if ((mem[i] == 0)); then continue; fi
            v=${free_kb[i]:-0}
            if ((v < mem[i] * 1024)); then
                if ((stale_kb > 0)); then
                    warnings+=("node$i: memory_mb asks for ${mem[i]} MiB, $((v / 1024)) MiB of $label pages free (more may be held by old hugepage files)")
                else
                    problems+=("node$i: memory_mb asks for ${mem[i]} MiB, only $((v / 1024)) MiB of $label pages are free")
                fi
            fi
        done
    fi

    # --- transparent huge pages (the workers' stream tables ask for them; ADR 0020)
    echo "== transparent huge pages"
    if [[ -r /sys/kernel/mm/transparent_hugepage/enabled ]]; then
        v=$(</sys/kernel/mm/transparent_hugepage/enabled)
        echo "   enabled: $v"
        if [[ $v == *"[never]"* ]]; then
            warnings+=("transparent huge pages are off: stream tables stay on 4 KiB pages (echo madvise > /sys/kernel/mm/transparent_hugepage/enabled, or transparent_hugepage=madvise on the kernel command line)")
        fi
    else
        echo "   not available in this kernel"
    fi

    # --- memory locking (vfio pins DMA memory)
    if ((EUID != 0)); then
        memlock=$(ulimit -l)
        while read -r a v; do
            if [[ $a == CapEff: ]]; then capeff=$((16#$v)); fi
        done </proc/$$/status
        if [[ $memlock != unlimited ]] && ! (((capeff >> 14) & 1)); then
            warnings+=("RLIMIT_MEMLOCK is $memlock KiB and $me lacks CAP_IPC_LOCK: vfio cannot pin DMA memory beyond it (LimitMEMLOCK=infinity)")
        fi
    fi

    # --- vfio
    echo "== vfio"
    if ((no_vfio)); then
        echo "   skipped (--no-vfio)"
    else
        if [[ -d /sys/bus/pci/drivers/vfio-pci ]]; then
            echo "   vfio-pci: loaded"
        else
            problems+=("vfio-pci is not loaded ($PROG bind loads it and adds it to $MODULES_LOAD)")
        fi
        v=0
        for f in /sys/kernel/iommu_groups/*; do
            if [[ -e $f ]]; then v=$((v + 1)); fi
        done
        if ((v > 0)); then
            echo "   IOMMU groups: $v"
        else
            problems+=("no IOMMU groups: enable VT-d/AMD-Vi in the BIOS and the IOMMU on the kernel command line ($PROG kernel-cmdline)")
        fi
        f=/sys/module/vfio/parameters/enable_unsafe_noiommu_mode
        if [[ -r $f && $(<"$f") == Y ]]; then
            warnings+=("vfio no-IOMMU mode is enabled: opening a group then needs CAP_SYS_RAWIO, which voxedge-media-dpdk.service does not grant")
        fi
        if devbind=$(find_devbind); then
            echo "   dpdk-devbind.py --status-dev net:"
            # lspci cannot reach the kernel modules from inside the unit (ProtectKernelModules=)
            # and says so once per device: drop that line, keep the rest.
            "$devbind" --status-dev net 2>&1 | sed -e '/Unable to load libkmod/d' -e '/^$/d' -e 's/^/     /' ||
                warnings+=("dpdk-devbind.py --status-dev net failed")
        else
            warnings+=("dpdk-devbind.py not found (apt-get install dpdk); devices checked through sysfs only")
        fi
        for f in /sys/bus/pci/drivers/vfio-pci/[0-9a-f]*:*; do
            if [[ -e $f ]]; then bound+=("${f##*/}"); fi
        done
        if ((${#addrs[@]})); then
            for a in "${addrs[@]}"; do
                if [[ ! -e $SYS_PCI/$a ]]; then
                    problems+=("$a: no such PCI device")
                elif [[ $(pci_driver "$a") != vfio-pci ]]; then
                    v=$(pci_driver "$a")
                    problems+=("$a is on ${v:-no driver}, not vfio-pci ($PROG bind $a)")
                fi
            done
        elif ((${#bound[@]} == 0)); then
            problems+=("no device is bound to vfio-pci ($PROG bind <pci-addr>)")
        fi
        if ((EUID != 0)); then
            if [[ -e /dev/vfio/vfio ]] && ! [[ -r /dev/vfio/vfio && -w /dev/vfio/vfio ]]; then
                problems+=("/dev/vfio/vfio is not read-writable by $me")
            fi
            targets=("${addrs[@]}")
            if ((${#targets[@]} == 0)); then targets=("${bound[@]}"); fi
            for a in "${targets[@]}"; do
                [[ $(pci_driver "$a") == vfio-pci ]] || continue
                g=$(pci_group "$a")
                if ! [[ -r /dev/vfio/$g && -w /dev/vfio/$g ]]; then
                    problems+=("/dev/vfio/$g ($a) is not read-writable by $me ($PROG bind $a gives group $SERVICE_GROUP access)")
                fi
            done
        else
            echo "   (running as root: the service user's access is not checked)"
        fi
    fi

    # --- CPU isolation
    echo "== cpu isolation"
    online=$(cpulist_file "$SYS_CPU/online")
    isolated=$(cpulist_file "$SYS_CPU/isolated")
    if [[ -e $SYS_CPU/nohz_full ]]; then nohz_present=1; fi
    nohz=$(cpulist_file "$SYS_CPU/nohz_full")
    echo "   online:    $(compress_cpulist "$online")"
    v=$(compress_cpulist "$isolated")
    echo "   isolated:  ${v:-none}"
    if ((nohz_present)); then
        v=$(compress_cpulist "$nohz")
        echo "   nohz_full: ${v:-none}"
    else
        echo "   nohz_full: not supported by this kernel"
    fi
    if [[ -z $isolated ]]; then
        warnings+=("no isolated CPUs: the scheduler may run other tasks on worker cores ($PROG kernel-cmdline)")
    fi
    if [[ -z $nohz && $nohz_present -eq 1 ]]; then
        warnings+=("no nohz_full CPUs: worker cores take the scheduler tick ($PROG kernel-cmdline)")
    fi
    for c in $cores; do
        if [[ -n $isolated ]] && ! in_set "$c" "$isolated"; then
            warnings+=("worker core $c is not isolated")
        fi
        if [[ -n $nohz ]] && ! in_set "$c" "$nohz"; then
            warnings+=("worker core $c is not nohz_full")
        fi
    done
    if [[ -n $isolated ]]; then
        for f in "$PROC_IRQ"/[0-9]*; do
            if [[ -r $f/effective_affinity_list ]]; then
                v=$(cpulist_file "$f/effective_affinity_list")
            else
                v=$(cpulist_file "$f/smp_affinity_list")
            fi
            if [[ -n $v ]] && set_intersects "$v" "$isolated"; then irq_hits=$((irq_hits + 1)); fi
        done
        echo "   IRQs that can fire on isolated CPUs: $irq_hits"
        if ((irq_hits > 0)); then
            warnings+=("$irq_hits IRQs can fire on isolated CPUs ($PROG irq-affinity $(compress_cpulist "$(set_minus "$online" "$isolated")"))")
        fi
    fi

    # --- verdict
    echo
    if ((${#warnings[@]})); then
        echo "Warnings:"
        printf '  - %s\n' "${warnings[@]}"
        if ((strict)); then problems+=("${warnings[@]}"); fi
    fi
    if ((${#problems[@]})); then
        {
            echo "Problems: voxedge media cannot run in DPDK mode until these are fixed:"
            printf '  - %s\n' "${problems[@]}"
        } >&2
        return 1
    fi
    echo "OK: the host is ready for DPDK mode."
}

# ---------------------------------------------------------------------------------------------

help_main() {
    cat <<EOF
Usage: $PROG <subcommand> [options] [arguments]

Prepares a Debian 12 host for 'voxedge media' with [dataplane] backend = "dpdk".

  hugepages <count-2MiB> [<count-1GiB>]   reserve hugepages per NUMA node, mount hugetlbfs
  bind <pci-addr>...                       bind NICs to vfio-pci (refuses interfaces in use)
  unbind <pci-addr> <kernel-driver>        give a NIC back to its kernel driver
  irq-affinity <cpu-list>                  move IRQs onto the housekeeping CPUs
  kernel-cmdline <isolated-cpu-list>       print the kernel parameters to add (applies nothing)
  check                                    report what is missing; exit 1 on problems

'$PROG <subcommand> --help' describes each one. Guide: docs/dpdk.md.
EOF
}

main() {
    if (($# == 0)); then
        help_main >&2
        exit 2
    fi
    local cmd=$1
    shift
    case $cmd in
        hugepages) cmd_hugepages "$@" ;;
        bind) cmd_bind "$@" ;;
        unbind) cmd_unbind "$@" ;;
        irq-affinity) cmd_irq_affinity "$@" ;;
        kernel-cmdline) cmd_kernel_cmdline "$@" ;;
        check) cmd_check "$@" ;;
        -h | --help | help) help_main ;;
        *)
            printf '%s: unknown subcommand %s\n' "$PROG" "$cmd" >&2
            help_main >&2
            exit 2
            ;;
    esac
}

main "$@"
