/* Discrete TCP events: retransmits, congestion state, resets, socket errors.
 *
 * Each is rare next to tcp_probe (at most one per segment sent, usually far
 * fewer), so every one becomes an event; only the port filter applies (they
 * run in softirq or timer context: the on-CPU pid is nobody's). One program
 * for the five hooks: one compilation and one ring instead of five. The
 * hooks this kernel lacks are not compiled (probes/program.py passes
 * TCPLAB_TP_<event> for those present; probes/plan.py says which are missing).
 *
 * - tcp:tcp_retransmit_skb (4.15+): every segment retransmitted, fast
 *   retransmit, RTO, tail loss probe and zero-window probe alike. `err`
 *   (6.x) is the result of the transmit, 0 when it went out.
 * - tcp:tcp_retransmit_synack (4.15+): a SYN-ACK sent again by a listener's
 *   request (its timer): Tcp RetransSegs counts these too. skaddr is the
 *   listener's; the ports are the request's.
 * - tcp:tcp_cong_state_set (6.1+): icsk_ca_state changes (Open, Disorder,
 *   CWR, Recovery, Loss).
 * - tcp:tcp_send_reset (4.15+): a RST sent, with or without a socket. From
 *   6.10 it has no sport/dport and its saddr/daddr are sockaddr images;
 *   from 6.11 a `reason` of type enum sk_rst_reason, which the 6.1 headers
 *   used here do not define: bcc's generated struct would not compile, so a
 *   placeholder of the same size (an enum is an int) is declared first.
 * - tcp:tcp_receive_reset (4.15+): a RST accepted on a socket.
 * - sock:inet_sk_error_report (5.13+, covered from 6.1 here): the errno the
 *   kernel hands the application (ETIMEDOUT, ECONNRESET, ECONNREFUSED). It
 *   has no skaddr: the 4-tuple joins it.
 *
 * Each hook has two variants, one set compiled (probes/plan.py picks): on
 * the raw tracepoints where the kernel has BTF (TCPLAB_RAW: never skipped
 * because another BPF program runs on the CPU, probes/rawtp.py), on the
 * classic ones otherwise (TCPLAB_TRACEPOINT). Both emit the same events.
 */
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <linux/skbuff.h>
#include <net/tcp.h>
#include "events.h"

#ifdef TCPLAB_ENUM_sk_rst_reason
enum sk_rst_reason { TCPLAB_SK_RST_REASON_PLACEHOLDER };
#endif

/* The classic layout of the TCP tracepoints: ports, and IPv4 and IPv6
 * address fields (TP_STORE_ADDRS: a v4 socket also gets its v4-mapped
 * address in the v6 fields). `family` is a field on newer kernels only
 * (format file); with family 0 it is told from the v6 address. */
static __always_inline void set_tuple(struct tcp_sock_event *e, u16 family, u16 sport, u16 dport,
                                      const u8 *s4, const u8 *d4, const u8 *s6, const u8 *d6)
{
    if (family == 0) {
        u8 a[16];
        __builtin_memcpy(a, s6, 16);
        u64 lo = *(u64 *)a;
        u32 mid = *(u32 *)(a + 8);
        family = (lo == 0 && mid == 0xffff0000) ? AF_INET : AF_INET6;
    }
    e->family = family;
    e->sport = sport;
    e->dport = dport;
    if (family == AF_INET) {
        __builtin_memcpy(e->saddr, s4, 4);
        __builtin_memcpy(e->daddr, d4, 4);
    } else {
        __builtin_memcpy(e->saddr, s6, 16);
        __builtin_memcpy(e->daddr, d6, 16);
    }
}

/* ctx fields are copied out by bpf_probe_read_kernel: with plain copies
 * the compiler may address them from a moved ctx pointer, which the
 * verifier refuses ("dereference of modified ctx ptr"). */
#define SET_TUPLE(e, args, family)                                                  \
    do {                                                                            \
        u8 s4_[4], d4_[4], s6_[16], d6_[16];                                        \
        bpf_probe_read_kernel(s4_, 4, (args)->saddr);                                  \
        bpf_probe_read_kernel(d4_, 4, (args)->daddr);                                  \
        bpf_probe_read_kernel(s6_, 16, (args)->saddr_v6);                              \
        bpf_probe_read_kernel(d6_, 16, (args)->daddr_v6);                              \
        set_tuple(&(e), family, (args)->sport, (args)->dport, s4_, d4_, s6_, d6_);  \
    } while (0)

static __always_inline int deliver(void *ctx, struct tcp_sock_event *e, u8 what)
{
    if (!ports_ok(e->sport, e->dport))
        return 0;
    e->ts = bpf_ktime_get_ns();
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->what = what;
    emit(ctx, e);
    return 0;
}

#ifdef TCPLAB_TRACEPOINT
#ifdef TCPLAB_TP_tcp_retransmit_skb
int tp_tcp_retransmit_skb(struct tracepoint__tcp__tcp_retransmit_skb *args)
{
    struct tcp_sock_event e = {};
    e.skaddr = (u64)args->skaddr;
    e.state = args->state;
#ifdef TCPLAB_TP_tcp_retransmit_skb_family
    SET_TUPLE(e, args, args->family);
#else
    SET_TUPLE(e, args, 0);
#endif
#ifdef TCPLAB_TP_tcp_retransmit_skb_err
    e.code = args->err;
#endif
    /* Tcp RetransSegs adds tcp_skb_pcount(skb) per retransmitted skb
     * (__tcp_retransmit_skb, 4.15 to 6.18), and TCP builds skbs of several
     * segments even where the device has no offloads (software GSO is
     * always on for TCP): the skb is still the one in the retransmit queue
     * here (a clone went out), its pcount the one counted. sk_buff.cb and
     * tcp_skb_cb.tcp_gso_segs sit at the same offsets in the 5.10, 6.1 and
     * 6.18 layouts. */
    const u8 *skb = (const u8 *)args->skbaddr;
    bpf_probe_read_kernel(&e.segs, sizeof(e.segs),
                          skb + offsetof(struct sk_buff, cb) + offsetof(struct tcp_skb_cb, tcp_gso_segs));
    return deliver(args, &e, TCPLAB_EV_RETRANSMIT);
}
#endif

#ifdef TCPLAB_TP_tcp_retransmit_synack
int tp_tcp_retransmit_synack(struct tracepoint__tcp__tcp_retransmit_synack *args)
{
    struct tcp_sock_event e = {};
    e.skaddr = (u64)args->skaddr;
#ifdef TCPLAB_TP_tcp_retransmit_synack_family
    SET_TUPLE(e, args, args->family);
#else
    SET_TUPLE(e, args, 0);
#endif
    e.segs = 1; /* tcp_rtx_synack adds 1 to Tcp RetransSegs */
    return deliver(args, &e, TCPLAB_EV_RETRANSMIT_SYNACK);
}
#endif

#ifdef TCPLAB_TP_tcp_cong_state_set
int tp_tcp_cong_state_set(struct tracepoint__tcp__tcp_cong_state_set *args)
{
    struct tcp_sock_event e = {};
    e.skaddr = (u64)args->skaddr;
    e.code = args->cong_state;
    SET_TUPLE(e, args, args->family);
    return deliver(args, &e, TCPLAB_EV_CONG_STATE);
}
#endif

#ifdef TCPLAB_TP_tcp_send_reset
int tp_tcp_send_reset(struct tracepoint__tcp__tcp_send_reset *args)
{
    struct tcp_sock_event e = {};
    e.skaddr = (u64)args->skaddr;
    e.state = args->state;
#if defined(TCPLAB_TP_tcp_send_reset_sport) && defined(TCPLAB_TP_tcp_send_reset_family)
    SET_TUPLE(e, args, args->family);
#elif defined(TCPLAB_TP_tcp_send_reset_sport)
    SET_TUPLE(e, args, 0);
#else
    /* 6.10+: sockaddr images, from the socket or (no socket) the segment
     * being answered, in the socket's own view either way. */
    u8 src[28], dst[28];
    bpf_probe_read_kernel(src, sizeof(src), args->saddr);
    bpf_probe_read_kernel(dst, sizeof(dst), args->daddr);
    e.family = *(u16 *)src;
    e.sport = ntohs(*(u16 *)(src + 2));
    e.dport = ntohs(*(u16 *)(dst + 2));
    if (e.family == AF_INET) {
        __builtin_memcpy(e.saddr, src + 4, 4);
        __builtin_memcpy(e.daddr, dst + 4, 4);
    } else {
        __builtin_memcpy(e.saddr, src + 8, 16);
        __builtin_memcpy(e.daddr, dst + 8, 16);
    }
#endif
#ifdef TCPLAB_TP_tcp_send_reset_reason
    e.code = args->reason;
#endif
    return deliver(args, &e, TCPLAB_EV_SEND_RESET);
}
#endif

#ifdef TCPLAB_TP_tcp_receive_reset
int tp_tcp_receive_reset(struct tracepoint__tcp__tcp_receive_reset *args)
{
    struct tcp_sock_event e = {};
    e.skaddr = (u64)args->skaddr;
#ifdef TCPLAB_TP_tcp_receive_reset_family
    SET_TUPLE(e, args, args->family);
#else
    SET_TUPLE(e, args, 0);
#endif
    return deliver(args, &e, TCPLAB_EV_RECEIVE_RESET);
}
#endif

#ifdef TCPLAB_TP_inet_sk_error_report
int tp_inet_sk_error_report(struct tracepoint__sock__inet_sk_error_report *args)
{
    /* It fires for every inet socket: UDP, SCTP and MPTCP too. */
    if (args->protocol != IPPROTO_TCP)
        return 0;
    struct tcp_sock_event e = {};
    e.code = args->error;
    SET_TUPLE(e, args, args->family);
    return deliver(args, &e, TCPLAB_EV_SK_ERROR);
}
#endif
#endif /* TCPLAB_TRACEPOINT */

#ifdef TCPLAB_RAW
/* The raw tracepoint variants (probes/rawtp.py says why raw, and checks
 * each one's TP_PROTO against this kernel's BTF): the same events from the
 * tracepoints' C arguments, read as their TP_fast_assign reads them. */
#include "sockread.h"

#ifdef TCPLAB_TP_tcp_retransmit_skb
/* TP_PROTO(sk, skb) 4.15+; (sk, skb, int err) on newer kernels (6.18, not 6.1). */
int raw_tcp_retransmit_skb(struct bpf_raw_tracepoint_args *ctx)
{
    u64 sk = ctx->args[0], skb = ctx->args[1];
    struct tcp_sock_event e = {};
    e.skaddr = sk;
    KREAD(e.state, sk, SK_STATE);
    SK_TUPLE(&e, sk);
#ifdef TCPLAB_RAW_tcp_retransmit_skb_err
    e.code = (int)ctx->args[2];
#endif
    /* tcp_skb_pcount(skb): see tp_tcp_retransmit_skb. */
    bpf_probe_read_kernel(&e.segs, sizeof(e.segs),
                          (const void *)(skb + TCPLAB_OFF_SKB_CB + TCPLAB_OFF_TCB_GSO_SEGS));
    /* The socket's own counter, added to with Tcp RetransSegs in
     * __tcp_retransmit_skb (4.15 to 6.18): the count this hit's segs belong
     * to. Measured on 6.18 (docs/probes.md): now and then the kernel counts
     * retransmissions (TcpExt TCPFastRetrans too) for which no program on
     * this tracepoint runs, raw or classic, with no recursion miss; the
     * counter's jump between two hits of the socket says how many. */
    KREAD(e.total_retrans, sk, TP_TOTAL_RETRANS);
    return deliver(ctx, &e, TCPLAB_EV_RETRANSMIT);
}
#endif

#ifdef TCPLAB_TP_tcp_retransmit_synack
/* TP_PROTO(sk, req) 4.15+: the listener and the request; ports and
 * addresses are the request's (ir_num is in host order, ir_rmt_port not),
 * the family the listener's, which also picks the v6 addresses. */
int raw_tcp_retransmit_synack(struct bpf_raw_tracepoint_args *ctx)
{
    u64 sk = ctx->args[0], req = ctx->args[1];
    struct tcp_sock_event e = {};
    u16 rport = 0;
    e.skaddr = sk;
    KREAD(e.family, sk, SK_FAMILY);
    KREAD(e.sport, req, IREQ_NUM);
    KREAD(rport, req, IREQ_RMT_PORT);
    e.dport = ntohs(rport);
    if (e.family == AF_INET6) {
        bpf_probe_read_kernel(e.saddr, 16, (const void *)(req + TCPLAB_OFF_IREQ_V6_LOC_ADDR));
        bpf_probe_read_kernel(e.daddr, 16, (const void *)(req + TCPLAB_OFF_IREQ_V6_RMT_ADDR));
    } else {
        bpf_probe_read_kernel(e.saddr, 4, (const void *)(req + TCPLAB_OFF_IREQ_LOC_ADDR));
        bpf_probe_read_kernel(e.daddr, 4, (const void *)(req + TCPLAB_OFF_IREQ_RMT_ADDR));
    }
    e.segs = 1; /* tcp_rtx_synack adds 1 to Tcp RetransSegs */
    return deliver(ctx, &e, TCPLAB_EV_RETRANSMIT_SYNACK);
}
#endif

#ifdef TCPLAB_TP_tcp_cong_state_set
/* TP_PROTO(sk, const u8 ca_state) 6.1+. */
int raw_tcp_cong_state_set(struct bpf_raw_tracepoint_args *ctx)
{
    u64 sk = ctx->args[0];
    struct tcp_sock_event e = {};
    e.skaddr = sk;
    e.code = (u8)ctx->args[1];
    SK_TUPLE(&e, sk);
    /* The counter again (see raw_tcp_retransmit_skb): a recovery ends with
     * a state change, which reads the retransmits the socket counted after
     * its last retransmit hit. */
    KREAD(e.total_retrans, sk, TP_TOTAL_RETRANS);
    return deliver(ctx, &e, TCPLAB_EV_CONG_STATE);
}
#endif

#ifdef TCPLAB_TP_tcp_send_reset
/* TP_PROTO(sk, skb) 4.15+, sk NULL allowed from 6.10 (a reset with no
 * socket); (sk, skb, enum sk_rst_reason) from 6.11. As 6.10+'s
 * TP_fast_assign: a full socket gives the tuple; otherwise (none, time-wait,
 * request) the segment being answered does, reversed into the socket's
 * view. Before 6.10 the kernel called it with a socket only. */
int raw_tcp_send_reset(struct bpf_raw_tracepoint_args *ctx)
{
    u64 sk = ctx->args[0], skb = ctx->args[1];
    struct tcp_sock_event e = {};
    u8 state = 0;
    e.skaddr = sk;
    if (sk)
        KREAD(state, sk, SK_STATE);
    e.state = state;
    u32 not_full = (1u << TCPLAB_TCP_TIME_WAIT) | (1u << TCPLAB_TCP_NEW_SYN_RECV);
    if (sk && !((1u << state) & not_full)) {
        SK_TUPLE(&e, sk);
    } else if (skb) {
        u64 head = 0, th = 0;
        u16 nh = 0;
        u8 ver = 0;
        u16 ports[2] = {}; /* th->source, th->dest */
        KREAD(head, skb, SKB_HEAD);
        KREAD(nh, skb, SKB_NETWORK_HEADER);
        KREAD(th, skb, SKB_DATA);
        u64 iph = head + nh;
        bpf_probe_read_kernel(&ver, 1, (const void *)iph);
        bpf_probe_read_kernel(ports, sizeof(ports), (const void *)th);
        e.sport = ntohs(ports[1]);
        e.dport = ntohs(ports[0]);
        if ((ver >> 4) == 6) {
            e.family = AF_INET6;
            bpf_probe_read_kernel(e.saddr, 16, (const void *)(iph + 24)); /* ipv6hdr daddr */
            bpf_probe_read_kernel(e.daddr, 16, (const void *)(iph + 8));  /* ipv6hdr saddr */
        } else {
            e.family = AF_INET;
            bpf_probe_read_kernel(e.saddr, 4, (const void *)(iph + 16)); /* iphdr daddr */
            bpf_probe_read_kernel(e.daddr, 4, (const void *)(iph + 12)); /* iphdr saddr */
        }
    }
#ifdef TCPLAB_RAW_tcp_send_reset_reason
    e.code = (int)ctx->args[2];
#endif
    return deliver(ctx, &e, TCPLAB_EV_SEND_RESET);
}
#endif

#ifdef TCPLAB_TP_tcp_receive_reset
/* TP_PROTO(sk) 4.15+. */
int raw_tcp_receive_reset(struct bpf_raw_tracepoint_args *ctx)
{
    u64 sk = ctx->args[0];
    struct tcp_sock_event e = {};
    e.skaddr = sk;
    SK_TUPLE(&e, sk);
    return deliver(ctx, &e, TCPLAB_EV_RECEIVE_RESET);
}
#endif

#ifdef TCPLAB_TP_inet_sk_error_report
/* TP_PROTO(sk) 5.13+; skaddr stays 0 as in the classic format, which has none. */
int raw_inet_sk_error_report(struct bpf_raw_tracepoint_args *ctx)
{
    u64 sk = ctx->args[0];
    u16 protocol = 0;
    KREAD(protocol, sk, SK_PROTOCOL);
    if (protocol != IPPROTO_TCP)
        return 0;
    struct tcp_sock_event e = {};
    KREAD(e.code, sk, SK_ERR);
    SK_TUPLE(&e, sk);
    return deliver(ctx, &e, TCPLAB_EV_SK_ERROR);
}
#endif
#endif /* TCPLAB_RAW */
