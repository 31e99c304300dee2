/* Congestion and flow control of each connection, sampled in the kernel.
 *
 * Hook: the tcp:tcp_probe tracepoint (since 4.16, when the tcp_probe module
 * became a tracepoint). It fires at the top of tcp_rcv_established() for
 * every segment an established socket receives: on a bulk sender once per
 * ACK, on its receiver once per data segment (zero-window probes included).
 * A bulk transfer here makes 130-180k hits a second (measured, loopback and
 * veth), so hits are not events: a hit becomes an event when snd_cwnd or
 * ssthresh changed, when snd_wnd or rcv_wnd crossed zero (either way), or
 * when the socket's last event is older than config[CFG_SAMPLE_MS]; the
 * rest are only counted (per socket in the event's `hits`, per CPU in
 * counters[CNT_HITS]).
 *
 * Its format changed (pick by the format file: probes/program.py passes
 * TCPLAB_TP_tcp_probe_<field> for the fields this kernel has):
 * - saddr/daddr are sockaddr images (sockaddr_in or sockaddr_in6) since
 *   4.16; `family` is a field only after 5.10: before, it is read from the
 *   image's sa_family;
 * - skaddr (the struct sock) only from 6.12: before, the socket is known by
 *   its 4-tuple (sample map key and event), which the correlator joins on.
 *
 * Two variants of the handler, one compiled (probes/plan.py picks):
 * raw_tcp_probe on the raw tracepoint where the kernel has BTF (never
 * skipped because another BPF program runs on the CPU: probes/rawtp.py),
 * tp_tcp_probe on the classic one otherwise. Both fill the same event and
 * share the sampling (sample_hit).
 */
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <uapi/linux/tcp.h>
#include "events.h"

struct sample_key {
    u64 skaddr;        /* 6.12+: the socket; the 4-tuple below stays zero */
    u8 saddr[16];      /* before 6.12: the 4-tuple */
    u8 daddr[16];
    u16 sport;
    u16 dport;
    u32 pad;
};

struct sample_state {
    u64 last_ts;       /* when this socket's last event went out */
    u32 snd_cwnd;
    u32 ssthresh;
    u32 snd_wnd;
    u32 rcv_wnd;
    u32 hits;          /* hits since last_ts, not yet reported */
    u32 pad;
};

/* The last reported values per socket. Inserted by the handler at a
 * socket's first hit, updated at each hit, read by the handler only. LRU
 * (nothing tells this program that a socket closed): a socket evicted and
 * seen again starts over with a TCPLAB_SAMPLE_FIRST event. */
BPF_TABLE("lru_hash", struct sample_key, struct sample_state, samples, 16384);

/* The address part of a sockaddr image into a u8[16] (AF_INET: 4 bytes). */
static __always_inline void image_addr(u8 *dst, const u8 *img, u16 family)
{
    if (family == AF_INET)
        __builtin_memcpy(dst, img + 4, 4);
    else
        __builtin_memcpy(dst, img + 8, 16);
}

static __always_inline int zero_crossed(u32 before, u32 now)
{
    return (before == 0) != (now == 0);
}

/* The per-socket sampling: first hit, change, zero crossing or period. */
static __always_inline int sample_hit(void *ctx, struct sample_key *key, struct tcp_probe_event *e)
{
    u64 now = bpf_ktime_get_ns();
    u8 why;
    struct sample_state *last = samples.lookup(key);
    if (!last) {
        struct sample_state fresh = {};
        fresh.hits = 1;
        samples.update(key, &fresh);
        last = samples.lookup(key);
        if (!last)
            return 0;
        why = TCPLAB_SAMPLE_FIRST;
    } else {
        /* Plain updates of the map value: tcp_rcv_established() runs under
         * the socket's lock, so one socket's hits never race each other. */
        last->hits++;
        u32 k = CFG_SAMPLE_MS;
        u32 *ms = config.lookup(&k);
        u64 every = ms ? (u64)*ms * 1000000 : 0;
        if (e->snd_cwnd != last->snd_cwnd || e->ssthresh != last->ssthresh)
            why = TCPLAB_SAMPLE_CWND;
        else if (zero_crossed(last->snd_wnd, e->snd_wnd) || zero_crossed(last->rcv_wnd, e->rcv_wnd))
            why = TCPLAB_SAMPLE_ZERO_WINDOW;
        else if (now - last->last_ts >= every)
            why = TCPLAB_SAMPLE_PERIOD;
        else
            return 0;
    }
    e->ts = now;
    e->hits = last->hits;
    e->why = why;
    last->last_ts = now;
    last->snd_cwnd = e->snd_cwnd;
    last->ssthresh = e->ssthresh;
    last->snd_wnd = e->snd_wnd;
    last->rcv_wnd = e->rcv_wnd;
    last->hits = 0;
    emit(ctx, e);
    return 0;
}

#ifdef TCPLAB_RAW
/* Hook: the tcp_probe RAW tracepoint (probes/rawtp.py says why raw), TP_PROTO
 * (struct sock *sk, struct sk_buff *skb) from 4.16 to 6.18. The fields are
 * what the tracepoint's TP_fast_assign computes, read from the socket at
 * this kernel's offsets (sockread.h); the socket is always known by its
 * address here, whatever the kernel's format has. */
#include "sockread.h"

int raw_tcp_probe(struct bpf_raw_tracepoint_args *ctx)
{
    count(CNT_HITS);
    u64 sk = ctx->args[0], skb = ctx->args[1];
    struct tcp_probe_event e = {};
    SK_TUPLE(&e, sk);
    if (!ports_ok(e.sport, e.dport))
        return 0;
    e.skaddr = sk;
    KREAD(e.snd_cwnd, sk, TP_SND_CWND);
    KREAD(e.snd_wnd, sk, TP_SND_WND);
    KREAD(e.rcv_wnd, sk, TP_RCV_WND);
    KREAD(e.snd_nxt, sk, TP_SND_NXT);
    KREAD(e.snd_una, sk, TP_SND_UNA);
    u32 srtt = 0;
    KREAD(srtt, sk, TP_SRTT_US);
    e.srtt_us = srtt >> 3; /* srtt_us holds 8 x the smoothed RTT */
    /* tcp_current_ssthresh(): snd_ssthresh while in CWR or Recovery (a cwnd
     * reduction), else at least 3/4 of cwnd. Same in 5.10 to 6.18. */
    u32 ssthresh = 0;
    u8 ca_state = 0;
    KREAD(ssthresh, sk, TP_SND_SSTHRESH);
    KREAD_BITS(ca_state, sk, ICSK_CA_STATE);
    if (!((1u << ca_state) & ((1u << TCP_CA_CWR) | (1u << TCP_CA_Recovery)))) {
        u32 three_quarters = (e.snd_cwnd >> 1) + (e.snd_cwnd >> 2);
        if (three_quarters > ssthresh)
            ssthresh = three_quarters;
    }
    e.ssthresh = ssthresh;
    /* data_len = skb->len - __tcp_hdrlen(th), th = skb->data: doff is the
     * high nibble of the TCP header's byte 12, in 32-bit words. */
    u32 len = 0;
    u64 data = 0;
    u8 doff = 0;
    KREAD(len, skb, SKB_LEN);
    KREAD(data, skb, SKB_DATA);
    bpf_probe_read_kernel(&doff, 1, (const void *)(data + 12));
    e.data_len = len - (doff >> 4) * 4;
    struct sample_key key = {};
    key.skaddr = sk;
    return sample_hit(ctx, &key, &e);
}
#endif

#ifdef TCPLAB_TRACEPOINT
int tp_tcp_probe(struct tracepoint__tcp__tcp_probe *args)
{
    count(CNT_HITS);
    u16 sport = args->sport, dport = args->dport;
    if (!ports_ok(sport, dport))
        return 0;
    u8 saddr[28], daddr[28];
    /* Read, not copied: see tcp_events.bpf.c SET_TUPLE. */
    bpf_probe_read_kernel(saddr, sizeof(saddr), args->saddr);
    bpf_probe_read_kernel(daddr, sizeof(daddr), args->daddr);
#ifdef TCPLAB_TP_tcp_probe_family
    u16 family = args->family;
#else
    u16 family = *(u16 *)saddr;   /* sa_family, the image's first field */
#endif
    struct sample_key key = {};
#ifdef TCPLAB_TP_tcp_probe_skaddr
    key.skaddr = (u64)args->skaddr;
#else
    image_addr(key.saddr, saddr, family);
    image_addr(key.daddr, daddr, family);
    key.sport = sport;
    key.dport = dport;
#endif
    struct tcp_probe_event e = {};
    e.skaddr = key.skaddr;
    e.snd_cwnd = args->snd_cwnd;
    e.ssthresh = args->ssthresh;
    e.snd_wnd = args->snd_wnd;
    e.rcv_wnd = args->rcv_wnd;
    e.srtt_us = args->srtt;
    e.snd_nxt = args->snd_nxt;
    e.snd_una = args->snd_una;
    e.family = family;
    e.sport = sport;
    e.dport = dport;
    e.data_len = args->data_len;
    image_addr(e.saddr, saddr, family);
    image_addr(e.daddr, daddr, family);
    return sample_hit(args, &key, &e);
}
#endif
