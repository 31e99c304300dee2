/* Reading a socket's or a segment's fields in the raw tracepoint programs
 * (tcp_probe.bpf.c, tcp_events.bpf.c under TCPLAB_RAW).
 *
 * A raw tracepoint gets the tracepoint's C arguments, not its formatted
 * fields, so these read what the classic tracepoints' TP_fast_assign reads,
 * the same way, at the offsets of the RUNNING kernel's structs:
 * probes/rawtp.py takes them from its BTF and passes TCPLAB_OFF_<field>
 * (the headers compiled with here are 6.1's, wrong for 6.18's structs).
 * Only bpf_probe_read_kernel, no map calls: safe in a header for bcc.
 */
#ifndef TCPLAB_SOCKREAD_H
#define TCPLAB_SOCKREAD_H

#define KREAD(dst, base, field) \
    bpf_probe_read_kernel(&(dst), sizeof(dst), (const void *)((u64)(base) + TCPLAB_OFF_##field))

/* A bitfield's value (icsk_ca_state): its byte, shifted and masked. */
#define KREAD_BITS(dst, base, field)                                              \
    do {                                                                          \
        u8 b_ = 0;                                                                \
        KREAD(b_, base, field);                                                   \
        (dst) = (b_ >> TCPLAB_SHIFT_##field) & ((1u << TCPLAB_BITS_##field) - 1); \
    } while (0)

/* The socket's 4-tuple as TP_STORE_ADDRS and TP_STORE_ADDR_PORTS store it
 * (4.15 to 6.18): ports from inet_sport and skc_dport, an AF_INET socket's
 * addresses from inet_saddr and skc_daddr, an AF_INET6 one's from
 * sk_v6_rcv_saddr and sk_v6_daddr. Addresses go into u8[16] (AF_INET: the
 * first 4 bytes), ports in host order. */
static __always_inline void sk_tuple(u64 sk, u16 *family, u16 *sport, u16 *dport, u8 *saddr, u8 *daddr)
{
    u16 fam = 0, sp = 0, dp = 0;
    KREAD(fam, sk, SK_FAMILY);
    KREAD(sp, sk, INET_SPORT);
    KREAD(dp, sk, SK_DPORT);
    *family = fam;
    *sport = ntohs(sp);
    *dport = ntohs(dp);
    if (fam == AF_INET6) {
        bpf_probe_read_kernel(saddr, 16, (const void *)(sk + TCPLAB_OFF_SK_V6_RCV_SADDR));
        bpf_probe_read_kernel(daddr, 16, (const void *)(sk + TCPLAB_OFF_SK_V6_DADDR));
    } else {
        bpf_probe_read_kernel(saddr, 4, (const void *)(sk + TCPLAB_OFF_INET_SADDR));
        bpf_probe_read_kernel(daddr, 4, (const void *)(sk + TCPLAB_OFF_SK_DADDR));
    }
}

#define SK_TUPLE(e, sk) sk_tuple((sk), &(e)->family, &(e)->sport, &(e)->dport, (e)->saddr, (e)->daddr)

#endif
