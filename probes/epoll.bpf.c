/* epoll_wait(2), epoll_pwait(2), epoll_pwait2(2): how long a multiplexer
 * blocks and how much each wake-up hands it.
 *
 * Hook: syscalls:sys_enter_* / sys_exit_* tracepoints (epoll_pwait2 since
 * 5.11). Enter saves epfd, maxevents and the timeout by thread; exit
 * reads the ready count or -errno.
 *
 * Two outputs: per-call events (for the filtered pids; switched off with
 * config[CFG_EPOLL_AGG_ONLY] for high-rate phases) and in-kernel log2
 * histograms of blocked time and ready counts per pid, which cost no ring
 * space at all.
 *
 * Fallback: kprobe/kretprobe on the syscall wrappers (__x64_sys_epoll_wait
 * ...; >= 4.17). do_epoll_wait() itself is static and may be inlined, so
 * the wrappers are the dependable kprobe target.
 */
#include <linux/signal.h>
#include <linux/time_types.h>
#include "events.h"

struct epoll_args {
    u64 ts;
    s32 epfd;
    s32 maxevents;
    s32 timeout_ms;
    u8 syscall;
};

/* Calls in flight, by thread. Inserted at enter for pids that pass the
 * filter, read and deleted at exit; LRU evicts threads that died inside. */
BPF_TABLE("lru_hash", u64, struct epoll_args, inflight, 16384);

/* log2 histograms per pid: slot i counts values in [2^(i-1), 2^i), slot 0
 * counts zero. Incremented by the exit handlers; read by user space (STATS
 * and `tcplab watch`), never cleared, so readers see running totals. */
BPF_HASH(blocked_hist, struct hist_key, u64, 16384);
BPF_HASH(ready_hist, struct hist_key, u64, 16384);

static __always_inline void on_enter(s32 epfd, s32 maxevents, s32 timeout_ms, u8 syscall)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!process_ok(id >> 32))
        return;
    struct epoll_args a = {};
    a.ts = bpf_ktime_get_ns();
    a.epfd = epfd;
    a.maxevents = maxevents;
    a.timeout_ms = timeout_ms;
    a.syscall = syscall;
    inflight.update(&id, &a);
}

/* bcc's bpf_log2l() puts 0 and 1 both in slot 1; a wake-up with nothing
 * ready (timeout) must not look like one with one ready. */
static __always_inline u32 log2_slot(u64 v)
{
    return v ? bpf_log2l(v) : 0;
}

/* epoll_pwait2 takes a struct __kernel_timespec __user *; NULL = forever. */
static __always_inline s32 timespec_ms(u64 uptr)
{
    if (!uptr)
        return -1;
    struct __kernel_timespec ts = {};
    bpf_probe_read_user(&ts, sizeof(ts), (void *)uptr);
    /* BPF has no signed division; a valid timespec is never negative. */
    return (u64)ts.tv_sec * 1000 + (u64)ts.tv_nsec / 1000000;
}

static __always_inline void on_exit(void *ctx, long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    struct epoll_args *a = inflight.lookup(&id);
    if (!a)
        return;
    struct epoll_call_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.dur_ns = e.ts - a->ts;
    e.pid = id >> 32;
    e.tid = (u32)id;
    e.epfd = a->epfd;
    e.maxevents = a->maxevents;
    e.timeout_ms = a->timeout_ms;
    e.syscall = a->syscall;
    inflight.delete(&id);
    if (ret >= 0)
        e.ready = ret;
    else
        e.err = -ret;

    struct hist_key k = {.pid = e.pid, .slot = log2_slot(e.dur_ns)};
    blocked_hist.atomic_increment(k);
    k.slot = log2_slot(e.ready);
    ready_hist.atomic_increment(k);

    if (cfg_on(CFG_EPOLL_AGG_ONLY))
        return;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    emit(ctx, &e);
}

#ifdef TCPLAB_TRACEPOINT
int tp_enter_epoll_wait(struct tracepoint__syscalls__sys_enter_epoll_wait *args)
{
    on_enter(args->epfd, args->maxevents, args->timeout, TCPLAB_SYS_EPOLL_WAIT);
    return 0;
}

int tp_enter_epoll_pwait(struct tracepoint__syscalls__sys_enter_epoll_pwait *args)
{
    on_enter(args->epfd, args->maxevents, args->timeout, TCPLAB_SYS_EPOLL_PWAIT);
    return 0;
}

/* epoll_pwait2 since 5.11: on 5.10 its struct does not exist to be named. */
#ifdef TCPLAB_TP_sys_enter_epoll_pwait2
int tp_enter_epoll_pwait2(struct tracepoint__syscalls__sys_enter_epoll_pwait2 *args)
{
    on_enter(args->epfd, args->maxevents, timespec_ms((u64)args->timeout),
             TCPLAB_SYS_EPOLL_PWAIT2);
    return 0;
}
#endif

/* The three exits share one body; three functions because a tracepoint
 * program's context type names its tracepoint. */
int tp_exit_epoll_wait(struct tracepoint__syscalls__sys_exit_epoll_wait *args)
{
    on_exit(args, args->ret);
    return 0;
}

int tp_exit_epoll_pwait(struct tracepoint__syscalls__sys_exit_epoll_pwait *args)
{
    on_exit(args, args->ret);
    return 0;
}

#ifdef TCPLAB_TP_sys_exit_epoll_pwait2
int tp_exit_epoll_pwait2(struct tracepoint__syscalls__sys_exit_epoll_pwait2 *args)
{
    on_exit(args, args->ret);
    return 0;
}
#endif
#endif

#ifdef TCPLAB_KPROBE
static __always_inline void kp_enter(struct pt_regs *ctx, u8 syscall)
{
    struct pt_regs *regs = (struct pt_regs *)PT_REGS_PARM1(ctx);
    u64 epfd = 0, maxevents = 0, timeout = 0;
    READ_KERNEL(epfd, PT_REGS_PARM1(regs));
    READ_KERNEL(maxevents, PT_REGS_PARM3(regs));
    READ_KERNEL(timeout, SYSCALL_ARG4(regs));
    s32 ms = syscall == TCPLAB_SYS_EPOLL_PWAIT2 ? timespec_ms(timeout) : (s32)timeout;
    on_enter((s32)epfd, (s32)maxevents, ms, syscall);
}

int kp_enter_epoll_wait(struct pt_regs *ctx)
{
    kp_enter(ctx, TCPLAB_SYS_EPOLL_WAIT);
    return 0;
}

int kp_enter_epoll_pwait(struct pt_regs *ctx)
{
    kp_enter(ctx, TCPLAB_SYS_EPOLL_PWAIT);
    return 0;
}

int kp_enter_epoll_pwait2(struct pt_regs *ctx)
{
    kp_enter(ctx, TCPLAB_SYS_EPOLL_PWAIT2);
    return 0;
}

int kp_exit_epoll(struct pt_regs *ctx)
{
    on_exit(ctx, PT_REGS_RC(ctx));
    return 0;
}
#endif
