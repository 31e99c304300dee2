/* TCP state transitions.
 *
 * Hook: the sock:inet_sock_set_state tracepoint (since 4.16). It fires from
 * inet_sk_state_store() and inet_sk_set_state(), i.e. for every change of
 * sk_state, including those that bypass tcp_set_state(): a listener's
 * CLOSE -> LISTEN (inet_csk_listen_start) and a server child's first state
 * (inet_csk_clone_lock). Its arguments give addresses and ports directly,
 * so nothing is read from struct sock by offset (headers here are 6.1, the
 * kernel 6.18: offsets would be wrong).
 *
 * Measured on 6.18 over loopback (docs/probes.md):
 * - client: CLOSE -> SYN_SENT carries sport 0, because tcp_v4_connect()
 *   sets SYN_SENT before inet_hash_connect() picks the ephemeral port; the
 *   skaddr is the stable key. Then SYN_SENT -> ESTABLISHED -> FIN_WAIT1 ->
 *   FIN_WAIT2 -> CLOSE for the active closer.
 * - server child: LISTEN -> SYN_RECV (the clone copies the listener's
 *   state, then inet_csk_clone_lock() sets SYN_RECV), SYN_RECV ->
 *   ESTABLISHED, then CLOSE_WAIT -> LAST_ACK -> CLOSE as passive closer.
 *   The request sock (NEW_SYN_RECV) never shows up. Before 6.15 that first
 *   change carries the listener's ports and addresses: see `first_of_child`.
 * - TIME_WAIT never appears: the active closer goes FIN_WAIT2 -> CLOSE
 *   while a separate timewait sock takes over.
 *
 * Fallback: a kprobe on tcp_set_state(sk, state) where the tracepoint is
 * missing (< 4.16). It reads struct sock through the headers, so it is only
 * right where the headers match the kernel, and it misses the transitions
 * that bypass tcp_set_state (LISTEN and the child's SYN_RECV).
 */
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#ifdef TCPLAB_KPROBE
#include <net/sock.h>
#endif
#include "events.h"

/* Sockets that passed the filter once, so the rest of their life passes
 * too (a pid filter only sees the transitions that run in the owner's
 * context; a port filter misses the sport-0 SYN_SENT). Inserted by
 * handle() when an event passes a filter, deleted when the socket reaches
 * CLOSE, read by handle(). LRU: a missed CLOSE cannot fill it up. */
BPF_TABLE("lru_hash", u64, u8, tracked, 65536);

static __always_inline int traced(u64 skaddr, u16 sport, u16 dport, u32 tgid, u8 newstate)
{
    if (!cfg_on(CFG_PIDS) && !cfg_on(CFG_LPORTS) && !cfg_on(CFG_RPORTS) && !cfg_on(CFG_PORTS))
        return 1;
    if (tracked.lookup(&skaddr))
        return 1;
    if (cfg_on(CFG_EITHER)) {
        /* tcplab trace: the traced pids' own sockets, or any socket on the
         * ports they listen on (accepted sockets change state in their
         * peer's context, so the pid alone misses them). A traced pid's
         * listen() adds its port here, in the kernel, before any peer can
         * connect; user space only adds (never removes) in this mode. */
        int by_pid = cfg_on(CFG_PIDS) && pid_ok(tgid);
        if (!by_pid && !filter_ports.lookup(&sport) && !filter_ports.lookup(&dport))
            return 0;
        if (by_pid && newstate == TCPLAB_TCP_LISTEN) {
            u8 on = 1;
            filter_ports.update(&sport, &on);
        }
    } else if (!pid_ok(tgid) || !ports_ok(sport, dport)) {
        return 0;
    }
    u8 one = 1;
    tracked.update(&skaddr, &one);
    return 1;
}

static __always_inline int passes(struct tcp_state_event *e)
{
    if (!traced(e->skaddr, e->sport, e->dport, e->pid, e->newstate))
        return 0;
    if (e->newstate == TCPLAB_TCP_CLOSE)
        tracked.delete(&e->skaddr);
    return 1;
}

static __always_inline int handle(void *ctx, struct tcp_state_event *e)
{
    u64 id = bpf_get_current_pid_tgid();
    e->pid = id >> 32;
    e->tid = (u32)id;
    if (!passes(e))
        return 0;
    e->ts = bpf_ktime_get_ns();
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    emit(ctx, e);
    return 0;
}

#ifdef TCPLAB_TRACEPOINT
/* A server child's first change, LISTEN -> SYN_RECV, as the kernels before
 * 6.15 report it, held until the child's own 4-tuple is known.
 * Why: sock:inet_sock_set_state fires from inet_csk_clone_lock(), which up
 * to 6.14 calls inet_sk_set_state(newsk, TCP_SYN_RECV) before it copies
 * inet_dport, inet_num and inet_sport from the request sock (and before
 * tcp_v4_syn_recv_sock()/tcp_v6_syn_recv_sock() set the addresses): the
 * change carries the clone's copy of the listener's ports and addresses,
 * dport 0 (measured on Debian 12's 6.1). Linux 6.15 fills the 4-tuple
 * first (commit a3a128f611a9, "inet: consolidate inet_csk_clone_lock()"),
 * as 6.18 here shows. Port filters, watch and the correlator key on the
 * 4-tuple, so the event waits here as it was (its own ts, pid, comm) and
 * leaves just before the socket's next change, which always comes and
 * starts from SYN_RECV (-> ESTABLISHED, or -> CLOSE when the child is
 * dropped), with that change's ports and addresses (the child's own); the
 * filters judge it by those. A dport-0 SYN_RECV only happens before 6.15,
 * so later kernels never use this map.
 * Inserted by tp_inet_sock_set_state() on such a change; read and deleted
 * by release_first() at the socket's next one. LRU: an entry whose socket
 * never changed again (none known) cannot fill it.
 * The kprobe variant never sees this change: inet_csk_clone_lock() does not
 * call tcp_set_state(). */
BPF_TABLE("lru_hash", u64, struct tcp_state_event, first_of_child, 16384);

static __always_inline void release_first(void *ctx, struct tcp_state_event *next)
{
    struct tcp_state_event *held = first_of_child.lookup(&next->skaddr);
    if (!held)
        return;
    struct tcp_state_event e = {};
    __builtin_memcpy(&e, held, sizeof(e));
    first_of_child.delete(&next->skaddr);
    e.family = next->family;
    e.sport = next->sport;
    e.dport = next->dport;
    __builtin_memcpy(e.saddr, next->saddr, sizeof(e.saddr));
    __builtin_memcpy(e.daddr, next->daddr, sizeof(e.daddr));
    if (passes(&e))
        emit(ctx, &e);
}

int tp_inet_sock_set_state(struct tracepoint__sock__inet_sock_set_state *args)
{
    /* The tracepoint also fires for SCTP and MPTCP sockets. */
    if (args->protocol != IPPROTO_TCP)
        return 0;
    struct tcp_state_event e = {};
    e.skaddr = (u64)args->skaddr;
    e.oldstate = args->oldstate;
    e.newstate = args->newstate;
    e.family = args->family;
    e.sport = args->sport;
    e.dport = args->dport;
    if (args->family == AF_INET) {
        __builtin_memcpy(e.saddr, args->saddr, 4);
        __builtin_memcpy(e.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(e.saddr, args->saddr_v6, 16);
        __builtin_memcpy(e.daddr, args->daddr_v6, 16);
    }
    if (e.oldstate == TCPLAB_TCP_LISTEN && e.newstate == TCPLAB_TCP_SYN_RECV && e.dport == 0) {
        u64 id = bpf_get_current_pid_tgid();
        e.pid = id >> 32;
        e.tid = (u32)id;
        e.ts = bpf_ktime_get_ns();
        bpf_get_current_comm(&e.comm, sizeof(e.comm));
        first_of_child.update(&e.skaddr, &e);
        return 0;
    }
    if (e.oldstate == TCPLAB_TCP_SYN_RECV)
        release_first(args, &e);
    return handle(args, &e);
}
#endif

#ifdef TCPLAB_KPROBE
int kp_tcp_set_state(struct pt_regs *ctx, struct sock *sk, int state)
{
    struct tcp_state_event e = {};
    u16 family = 0, num = 0, dport = 0;
    u8 old = 0;
    READ_KERNEL(family, sk->__sk_common.skc_family);
    READ_KERNEL(old, sk->__sk_common.skc_state);
    READ_KERNEL(num, sk->__sk_common.skc_num);
    READ_KERNEL(dport, sk->__sk_common.skc_dport);
    e.skaddr = (u64)sk;
    e.oldstate = old;
    e.newstate = state;
    e.family = family;
    e.sport = num;              /* skc_num is host order already */
    e.dport = ntohs(dport);
    if (family == AF_INET) {
        bpf_probe_read_kernel(e.saddr, 4, &sk->__sk_common.skc_rcv_saddr);
        bpf_probe_read_kernel(e.daddr, 4, &sk->__sk_common.skc_daddr);
    } else {
        bpf_probe_read_kernel(e.saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
        bpf_probe_read_kernel(e.daddr, 16, &sk->__sk_common.skc_v6_daddr);
    }
    return handle(ctx, &e);
}
#endif
