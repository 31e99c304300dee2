/* connect(2): which process and fd own a client socket, and how the call
 * ended.
 *
 * Hooks: the syscalls:sys_enter_connect / sys_exit_connect tracepoints
 * (syscall tracepoints since 4.7 with CONFIG_FTRACE_SYSCALLS) and
 * sock:inet_sock_set_state (since 4.16).
 * Enter saves the fd and the destination sockaddr (read from the user's
 * buffer) by thread. A TCP connect moves its socket CLOSE -> SYN_SENT in
 * the caller's own context, inside the call (tcp_v4_connect and
 * tcp_v6_connect), so the state tracepoint seen by a thread with a connect
 * in flight names the socket: its skaddr is the key the tcp_state probe's
 * transitions carry. No struct is read by offset (the headers here are not
 * the running kernel's). Exit reports the result: 0 (blocking, done), or
 * -EINPROGRESS (non-blocking: the handshake goes on, and a later failure
 * such as ECONNREFUSED or ETIMEDOUT comes back through SO_ERROR, not here),
 * or a failure of the call itself: ECONNREFUSED, ETIMEDOUT (blocking),
 * EADDRNOTAVAIL (no ephemeral port left), ENETUNREACH, ...
 *
 * Kprobe fallback: the syscall wrappers (__x64_sys_connect, ...; >= 4.17);
 * the skaddr then stays 0 unless the state tracepoint exists too.
 */
#include <linux/socket.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include "events.h"

struct connect_args {
    u64 ts;
    u64 skaddr;
    s32 fd;
    u16 family;
    u16 dport;
    u8 daddr[16];
};

/* Calls in flight, by thread (pid_tgid): inserted at enter for callers that
 * pass the filter and for IP destinations only (AF_UNIX connects are not
 * TCP), completed by the state tracepoint, read and deleted at exit. A
 * thread killed inside connect leaves a stale entry: LRU evicts it. */
BPF_TABLE("lru_hash", u64, struct connect_args, inflight, 16384);

static __always_inline void on_enter(s32 fd, u64 uaddr)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!process_ok(id >> 32) || !uaddr)
        return;
    struct connect_args a = {};
    u16 port = 0;
    bpf_probe_read_user(&a.family, sizeof(a.family), (void *)uaddr);
    if (a.family != AF_INET && a.family != AF_INET6)
        return;
    /* sockaddr_in and sockaddr_in6 both start with family, port. */
    bpf_probe_read_user(&port, sizeof(port), (void *)(uaddr + 2));
    if (a.family == AF_INET)
        bpf_probe_read_user(a.daddr, 4, (void *)(uaddr + 4));
    else
        bpf_probe_read_user(a.daddr, 16, (void *)(uaddr + 8));
    a.dport = ntohs(port);
    a.fd = fd;
    a.ts = bpf_ktime_get_ns();
    inflight.update(&id, &a);
}

static __always_inline void on_exit(void *ctx, long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    struct connect_args *a = inflight.lookup(&id);
    if (!a)
        return;
    struct connect_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.dur_ns = e.ts - a->ts;
    e.skaddr = a->skaddr;
    e.pid = id >> 32;
    e.tid = (u32)id;
    e.fd = a->fd;
    e.err = ret < 0 ? -ret : 0;
    e.family = a->family;
    e.dport = a->dport;
    __builtin_memcpy(e.daddr, a->daddr, 16);
    inflight.delete(&id);
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    emit(ctx, &e);
}

/* Both attach variants need the state tracepoint for the skaddr. */
int tp_inet_sock_set_state(struct tracepoint__sock__inet_sock_set_state *args)
{
    if (args->newstate != TCPLAB_TCP_SYN_SENT || args->protocol != IPPROTO_TCP)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    struct connect_args *a = inflight.lookup(&id);
    if (a)
        a->skaddr = (u64)args->skaddr;
    return 0;
}

#ifdef TCPLAB_TRACEPOINT
int tp_enter_connect(struct tracepoint__syscalls__sys_enter_connect *args)
{
    on_enter(args->fd, (u64)args->uservaddr);
    return 0;
}

int tp_exit_connect(struct tracepoint__syscalls__sys_exit_connect *args)
{
    on_exit(args, args->ret);
    return 0;
}
#endif

#ifdef TCPLAB_KPROBE
int kp_enter_connect(struct pt_regs *ctx)
{
    struct pt_regs *regs = (struct pt_regs *)PT_REGS_PARM1(ctx);
    u64 fd = 0, uaddr = 0;
    READ_KERNEL(fd, PT_REGS_PARM1(regs));
    READ_KERNEL(uaddr, PT_REGS_PARM2(regs));
    on_enter((s32)fd, uaddr);
    return 0;
}

int kp_exit_connect(struct pt_regs *ctx)
{
    on_exit(ctx, PT_REGS_RC(ctx));
    return 0;
}
#endif
