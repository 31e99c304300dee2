/* Process tree of the traced pids: `tcplab watch -p PID` follows children.
 *
 * Hooks: sched:sched_process_fork and sched:sched_process_exec (both since
 * 2.6.x; tracepoints only). fork runs in the parent's context: a parent
 * among the traced pids (filter_pids, CFG_PIDS on) gets its child added to
 * this program's own filter at once, so that a grandchild forked before
 * user space reacts is followed too, and user space hears of it (a
 * proc_event) and adds the child to every probe's filter. The tracepoint
 * also fires for new threads (child_pid is then a thread id): user space
 * tells them apart (/proc/PID/status Tgid) and keeps processes only.
 * exec reports a traced process's new program (its comm changes).
 * Without a pid filter nothing is emitted: there is nothing to follow.
 */
#include "events.h"

static __always_inline int traced_parent(u32 tgid)
{
    return cfg_on(CFG_PIDS) && filter_pids.lookup(&tgid) != 0;
}

int tp_sched_process_fork(struct tracepoint__sched__sched_process_fork *args)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!traced_parent(tgid))
        return 0;
    u32 child = args->child_pid;
    u8 one = 1;
    filter_pids.update(&child, &one);
    struct proc_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.pid = tgid;
    e.child = child;
    e.kind = TCPLAB_PROC_FORK;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    emit(args, &e);
    return 0;
}

int tp_sched_process_exec(struct tracepoint__sched__sched_process_exec *args)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!traced_parent(tgid))
        return 0;
    struct proc_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.pid = tgid;
    e.child = tgid;
    e.kind = TCPLAB_PROC_EXEC;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));  /* the new program's */
    emit(args, &e);
    return 0;
}
