/* accept(2) and accept4(2): who accepted what, or why not.
 *
 * Hook: the syscalls:sys_enter_accept{,4} / sys_exit_accept{,4}
 * tracepoints (syscall tracepoints since 4.7 with CONFIG_FTRACE_SYSCALLS).
 * Enter saves the listening fd and the user's address buffer by thread;
 * exit reads the return value (new fd or -errno: EAGAIN from a
 * non-blocking accept on an empty queue, EMFILE when the open-file limit
 * is reached) and the peer address the kernel just wrote to the buffer.
 *
 * Fallback: kprobe/kretprobe on the syscall wrappers (__x64_sys_accept4,
 * __arm64_sys_accept4, ...; >= 4.17), reading the arguments from the
 * wrapped user pt_regs.
 */
#include <linux/socket.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include "events.h"

struct accept_args {
    u64 ts;
    u64 upeer;    /* struct sockaddr __user * (may be 0) */
    s32 lfd;
    u8 syscall;
};

/* Calls in flight, by thread (pid_tgid). Inserted at enter for pids that
 * pass the filter, read and deleted at exit. A thread killed inside accept
 * leaves a stale entry: LRU evicts it. */
BPF_TABLE("lru_hash", u64, struct accept_args, inflight, 16384);

static __always_inline void on_enter(s32 lfd, u64 upeer, u8 syscall)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!process_ok(id >> 32))
        return;
    struct accept_args a = {};
    a.ts = bpf_ktime_get_ns();
    a.upeer = upeer;
    a.lfd = lfd;
    a.syscall = syscall;
    inflight.update(&id, &a);
}

static __always_inline void on_exit(void *ctx, long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    struct accept_args *a = inflight.lookup(&id);
    if (!a)
        return;
    struct accept_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.dur_ns = e.ts - a->ts;
    e.pid = id >> 32;
    e.tid = (u32)id;
    e.lfd = a->lfd;
    e.syscall = a->syscall;
    u64 upeer = a->upeer;
    inflight.delete(&id);
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    if (ret >= 0) {
        e.fd = ret;
        if (upeer) {
            /* sockaddr_in and sockaddr_in6 both start with family, port. */
            u16 family = 0, port = 0;
            bpf_probe_read_user(&family, sizeof(family), (void *)upeer);
            bpf_probe_read_user(&port, sizeof(port), (void *)(upeer + 2));
            e.family = family;
            e.peer_port = ntohs(port);
            if (family == AF_INET)
                bpf_probe_read_user(e.peer_addr, 4, (void *)(upeer + 4));
            else if (family == AF_INET6)
                bpf_probe_read_user(e.peer_addr, 16, (void *)(upeer + 8));
        }
    } else {
        e.fd = -1;
        e.err = -ret;
    }
    emit(ctx, &e);
}

#ifdef TCPLAB_TRACEPOINT
int tp_enter_accept4(struct tracepoint__syscalls__sys_enter_accept4 *args)
{
    on_enter(args->fd, (u64)args->upeer_sockaddr, TCPLAB_SYS_ACCEPT4);
    return 0;
}

int tp_exit_accept4(struct tracepoint__syscalls__sys_exit_accept4 *args)
{
    on_exit(args, args->ret);
    return 0;
}

int tp_enter_accept(struct tracepoint__syscalls__sys_enter_accept *args)
{
    on_enter(args->fd, (u64)args->upeer_sockaddr, TCPLAB_SYS_ACCEPT);
    return 0;
}

int tp_exit_accept(struct tracepoint__syscalls__sys_exit_accept *args)
{
    on_exit(args, args->ret);
    return 0;
}
#endif

#ifdef TCPLAB_KPROBE
static __always_inline void kp_enter(struct pt_regs *ctx, u8 syscall)
{
    struct pt_regs *regs = (struct pt_regs *)PT_REGS_PARM1(ctx);
    u64 fd = 0, upeer = 0;
    READ_KERNEL(fd, PT_REGS_PARM1(regs));
    READ_KERNEL(upeer, PT_REGS_PARM2(regs));
    on_enter((s32)fd, upeer, syscall);
}

int kp_enter_accept4(struct pt_regs *ctx)
{
    kp_enter(ctx, TCPLAB_SYS_ACCEPT4);
    return 0;
}

int kp_enter_accept(struct pt_regs *ctx)
{
    kp_enter(ctx, TCPLAB_SYS_ACCEPT);
    return 0;
}

int kp_exit_accept(struct pt_regs *ctx)
{
    on_exit(ctx, PT_REGS_RC(ctx));
    return 0;
}
#endif
