/* What every probe program shares: delivery, counters, filters.
 *
 * probes/loader.py compiles this text followed by one probe's .bpf.c as a
 * single program. It is not #included because bcc rewrites map calls
 * (config.lookup(...)) only in its main text: in a header they stay
 * function-pointer calls and the verifier rejects them ("unknown opcode
 * 8d"); inside a macro bcc refuses them outright.
 *
 * Settings and every constant shared with Python come in as -D flags from
 * probes/program.py (never by editing this text): TCPLAB_PERFBUF selects
 * the perf buffer (kernels < 5.8 have no BPF ring buffer),
 * TCPLAB_RING_PAGES sizes the ring, TCPLAB_EVENT names the probe's record
 * struct (events.h), TCPLAB_TRACEPOINT, TCPLAB_RAW and TCPLAB_KPROBE select which attach
 * variants get compiled, CFG_* and CNT_* are the slots of the arrays below.
 */
#include "events.h"

#define TCPLAB_FILTER_MAX 1024

/* The event channel. Written by emit() below only; read by probes/ring.py
 * (or bcc's readers, see probes/loader.py). A ring buffer (>= 5.8) is one buffer shared by all
 * CPUs, ordered, and cheap for the producer; the perf buffer fallback is
 * per CPU and costs the traced process more. */
#ifdef TCPLAB_PERFBUF
BPF_PERF_OUTPUT(events);
#else
BPF_RINGBUF_OUTPUT(events, TCPLAB_RING_PAGES);
#endif
/* Never wake the reader per record: it drains every few ms anyway
 * (probes/loader.py ProbeSet.poll), and a wake-up costs the traced process
 * an irq_work and a scheduler wake-up on every event it causes. */
#define TCPLAB_RB_FLAGS BPF_RB_NO_WAKEUP

/* Per-CPU counters, so counting never contends: [CNT_EVENTS] events handed
 * to the channel, [CNT_DROPS] events lost because the channel refused them
 * (full), [CNT_RETRIES] submissions tried twice (see emit()).
 * Incremented by emit(); read (summed over CPUs) by user space for STATS. A
 * lost event is never silent. */
BPF_PERCPU_ARRAY(counters, u64, CNT_MAX);

/* Switches and settings (slots: probes/program.py Cfg): config[CFG_x] != 0
 * means filter x is active (an empty filter passes everything);
 * CFG_EPOLL_AGG_ONLY keeps epoll to its histograms; CFG_SELF_PID is the
 * reader's own pid, whose epoll_wait on the ring would otherwise trace
 * itself, one event per wake-up, forever. Written by user space (a filter's
 * switch after its hash is filled); read by the handlers. */
BPF_ARRAY(config, u32, CFG_MAX);

/* Filter sets (key present = allowed). Inserted and deleted by user space at
 * start and while running; read by the handlers. lports match the socket's
 * own port, rports its peer's, ports either. */
BPF_HASH(filter_pids, u32, u8, TCPLAB_FILTER_MAX);
BPF_HASH(filter_lports, u16, u8, TCPLAB_FILTER_MAX);
BPF_HASH(filter_rports, u16, u8, TCPLAB_FILTER_MAX);
BPF_HASH(filter_ports, u16, u8, TCPLAB_FILTER_MAX);

static __always_inline int cfg_on(u32 idx)
{
    u32 *on = config.lookup(&idx);
    return on && *on;
}

static __always_inline void count(u32 idx)
{
    u64 *v = counters.lookup(&idx);
    if (v)
        (*v)++; /* per-CPU slot: no other CPU writes it */
}

/* The one way a record leaves a program: into the channel, counted as
 * handed over or as dropped. Typed (not void *) because bcc learns the
 * record's layout from this call, for table.event() and the raw batches'
 * layout (probes/layout.py). */
static __always_inline void emit(void *ctx, struct TCPLAB_EVENT *e)
{
#ifdef TCPLAB_PERFBUF
    int rc = events.perf_submit(ctx, e, sizeof(*e));
#else
    int rc = events.ringbuf_output(e, sizeof(*e), TCPLAB_RB_FLAGS);
    if (rc) {
        /* Since 6.15 the ring's lock is an rqspinlock, which may refuse
         * instead of spinning. Measured on 6.18 in this 2-vCPU VM
         * (docs/probes.md): with both CPUs submitting 120-190k records/s,
         * 1 in 28-80k submissions is refused at once (< 0.6 us) with the
         * ring nearly empty; 70-97% of those go through at the next
         * attempt, the rest within 15 (< 3 us in all): one retry lost 28
         * of 133 in 20 s.
         * Hence up to TCPLAB_RING_RETRIES more attempts, counted once. A
         * full ring refuses each attempt in ~30 ns (bcc cannot hand the
         * ring to bpf_ringbuf_query to tell the two cases apart), so while
         * it is full a record costs the traced task ~1 us more before it
         * counts as a drop. Before 6.15 only a full ring gets here. */
        count(CNT_RETRIES);
        for (int i = 0; rc && i < TCPLAB_RING_RETRIES; i++)
            rc = events.ringbuf_output(e, sizeof(*e), TCPLAB_RB_FLAGS);
    }
#endif
    count(rc == 0 ? CNT_EVENTS : CNT_DROPS);
}

static __always_inline int is_self(u32 tgid)
{
    u32 k = CFG_SELF_PID;
    u32 *self = config.lookup(&k);
    return self && *self == tgid;
}

static __always_inline int pid_ok(u32 tgid)
{
    if (!cfg_on(CFG_PIDS))
        return 1;
    return filter_pids.lookup(&tgid) != 0;
}

/* For accept and epoll, which have no ports to compare: with a pid filter,
 * the pids decide; with only port filters, nothing passes (the user asked
 * for some connections only, and these events cannot tell which); with no
 * filter, everything but the reader itself. */
static __always_inline int process_ok(u32 tgid)
{
    if (is_self(tgid))
        return 0;
    if (cfg_on(CFG_PIDS))
        return filter_pids.lookup(&tgid) != 0;
    return !cfg_on(CFG_LPORTS) && !cfg_on(CFG_RPORTS) && !cfg_on(CFG_PORTS);
}

static __always_inline int ports_ok(u16 lport, u16 rport)
{
    if (cfg_on(CFG_LPORTS) && !filter_lports.lookup(&lport))
        return 0;
    if (cfg_on(CFG_RPORTS) && !filter_rports.lookup(&rport))
        return 0;
    if (cfg_on(CFG_PORTS) && !filter_ports.lookup(&lport) && !filter_ports.lookup(&rport))
        return 0;
    return 1;
}

/* The x86_64 and arm64 syscall wrappers (CONFIG_ARCH_HAS_SYSCALL_WRAPPER,
 * >= 4.17) take one argument, the user's pt_regs; the syscall's own
 * arguments are read from there. The 4th syscall argument is r10 on x86_64
 * (rcx is clobbered by the syscall instruction), not PT_REGS_PARM4's rcx. */
#if defined(__x86_64__)
#define SYSCALL_ARG4(regs) ((regs)->r10)
#else
#define SYSCALL_ARG4(regs) PT_REGS_PARM4(regs)
#endif
#define READ_KERNEL(dst, src) bpf_probe_read_kernel(&(dst), sizeof(dst), (const void *)&(src))

