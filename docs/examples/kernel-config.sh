#!/bin/sh
# kernel-config.sh [CONFIG]: which of the kernel options the agent's collectors use a board's
# kernel has (docs/operations.md, "Kernel options per collector"). Reads CONFIG, else
# /proc/config.gz (CONFIG_IKCONFIG_PROC), else /boot/config-$(uname -r). POSIX sh, gzip only.
#
# Prints one line per option: y (built in), m (a module: it must be installed and loadable;
# the sock_diag modules load on demand, the others must be loaded at boot), or missing, with
# the collectors that use it and what they do without it ("absent" for the optional ones).
# Exit: 0 every option present, 1 one that is not optional missing, 2 no configuration found.
set -u

config=${1:-}
if [ -z "$config" ]; then
    if [ -r /proc/config.gz ]; then
        config=/proc/config.gz
    elif [ -r "/boot/config-$(uname -r)" ]; then
        config=/boot/config-$(uname -r)
    else
        echo "kernel-config.sh: no /proc/config.gz (CONFIG_IKCONFIG_PROC) and no /boot/config-$(uname -r); give the kernel's .config" >&2
        exit 2
    fi
fi
case $config in
    *.gz) text=$(gzip -dc "$config") || exit 2 ;;
    *) text=$(cat "$config") || exit 2 ;;
esac

missing=0
check() {  # OPTION "who uses it" "what happens without it" [optional]
    value=$(printf '%s\n' "$text" | sed -n "s/^$1=//p")
    case $value in
        y | m) printf '%-26s %-8s %s\n' "$1" "$value" "$2" ;;
        *)
            if [ "${4:-}" = optional ]; then
                printf '%-26s %-8s %s: %s\n' "$1" absent "$2" "$3"
            else
                printf '%-26s %-8s %s: %s\n' "$1" missing "$2" "$3"
                missing=1
            fi ;;
    esac
}

check CONFIG_AUDIT "Process, NetworkActivity, Login (PAM)" "audit source unavailable; Process falls back to the proc connector, NetworkActivity has no net events, Login no auth events"
check CONFIG_AUDITSYSCALL "Process, NetworkActivity (audit rules)" "no syscall records come (32-bit arm: needs AEABI, no OABI_COMPAT): set Process_Mode 2"
check CONFIG_CONNECTOR "Process (proc connector)" "Process falls back to /proc polling"
check CONFIG_PROC_EVENTS "Process (proc connector)" "the proc connector delivers nothing: Process sees no events when audit is unavailable; set Process_Mode 3"
check CONFIG_INET_DIAG "NetworkActivity, ListeningPorts (sock_diag)" "fall back to /proc/net (no byte counters)"
check CONFIG_INET_TCP_DIAG "NetworkActivity, ListeningPorts (sock_diag TCP)" "fall back to /proc/net"
check CONFIG_INET_UDP_DIAG "NetworkActivity, ListeningPorts (sock_diag UDP)" "fall back to /proc/net"
check CONFIG_NETFILTER_NETLINK "Firewall (nftables over netlink)" "no nftables rules are read"
check CONFIG_NF_TABLES "Firewall (nftables)" "no nft rules; legacy iptables only"
check CONFIG_IP_NF_IPTABLES "Firewall (legacy iptables, optional)" "no legacy iptables tables (fine with nftables)" optional
check CONFIG_PROC_FS "every collector (/proc)" "the agent cannot run"
check CONFIG_SYSFS "SystemInformation (/sys/class/dmi, /sys/class/net)" "hardware and interface details missing"
check CONFIG_INOTIFY_USER "FileSystem (inotify)" "FileSystem reports unavailable: no file events" optional
check CONFIG_SECCOMP_FILTER "the systemd unit (SystemCallFilter=)" "systemd skips SystemCallFilter= (the unit runs without it)"
check CONFIG_NAMESPACES "the systemd unit (ProtectSystem=, PrivateTmp=, ...)" "systemd cannot set up the sandbox: the unit fails with 226/NAMESPACE"
exit $missing
