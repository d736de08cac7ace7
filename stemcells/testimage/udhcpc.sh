#!/bin/sh
# udhcpc event script of the stemforge test image: applies a lease (address; the default
# route unless SF_DEFAULT_ROUTE=false; DNS servers into /etc/resolv.conf unless
# SF_SET_DNS=false) and records it in /run/stemforge/dhcp-<iface>.  It sends nothing itself.
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface" 2>/dev/null
        ip link set "$interface" up
        ;;
    bound|renew)
        prefix=${mask:-24}
        gw=
        for r in $router; do
            gw=$r
            break
        done
        ip -4 addr flush dev "$interface" 2>/dev/null
        ip addr add "$ip/$prefix" ${broadcast:+broadcast "$broadcast"} dev "$interface"
        if [ -n "$gw" ] && [ "${SF_DEFAULT_ROUTE:-true}" = true ]; then
            ip route replace default via "$gw" dev "$interface"
        fi
        if [ -n "$dns" ] && [ "${SF_SET_DNS:-true}" = true ]; then
            : > /etc/resolv.conf
            for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
        fi
        mkdir -p /run/stemforge
        echo "ip=$ip prefix=$prefix router=$gw" > "/run/stemforge/dhcp-$interface"
        ;;
esac
exit 0
