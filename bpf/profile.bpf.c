// antiprof's on-CPU sampler, compiled by BCC with -D options from antiprof_core.sampler.
//
// A perf_event program on the software CPU clock, attached on every online CPU. Each sample
// is keyed by {tgid, tid, cpu, user stack id, kernel stack id, comm} and counted in the kernel
// (aggregate mode) or sent through a ring buffer with its ktime (trace mode).
//
// Two sets of maps (counts + stack traces + counters) are switched by the one-slot array
// `active_set`: user space flips it, waits for programs already running to finish, and then
// drains the set the kernel no longer writes. The program reads the slot once per sample, so
// a sample's counters, count and stacks always land in the same set.
//
// Only BPF helpers and uapi structs: no kernel struct field is read.
//
// Options (all given with -D): MAX_STACK_DEPTH, MAX_STACKS, MAX_COUNTS, MAX_PIDS,
// RINGBUF_PAGES, FILTER_PIDS, KERNEL_STACKS, USER_STACKS, INCLUDE_IDLE, TRACE_MODE.

#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include <linux/sched.h>

// Counter slots, per set, per CPU. Keep in sync with COUNTER_NAMES in antiprof_core/sampler.py.
enum counter {
    SAMPLES_SEEN = 0,
    SAMPLES_LOST,          // counts map full, or ring buffer full in trace mode
    USER_NOT_PRESENT,      // -EFAULT: no user stack (kernel thread)
    USER_COLLISION,        // -EEXIST: another stack holds the hash bucket
    USER_MAP_FULL,         // -ENOMEM
    USER_OTHER,
    KERNEL_NOT_PRESENT,    // -EFAULT: the sample hit user mode
    KERNEL_COLLISION,
    KERNEL_MAP_FULL,
    KERNEL_OTHER,
    COUNTS_MAP_FULL,
    COUNTER_SLOTS,
};

struct sample_key {
    u32 tgid;
    u32 tid;
    u32 cpu;
    s32 user_stack_id;
    s32 kernel_stack_id;
    char comm[TASK_COMM_LEN];
};

struct sample_event {
    u64 ktime_ns;
    u32 set;
    u32 pad;
    struct sample_key key;
};

struct stack_value {
    u64 ip[MAX_STACK_DEPTH];
};

BPF_ARRAY(active_set, u32, 1);
BPF_PERCPU_ARRAY(counters, u64, 2 * COUNTER_SLOTS);

BPF_TABLE("stacktrace", int, struct stack_value, stacks0, MAX_STACKS);
BPF_TABLE("stacktrace", int, struct stack_value, stacks1, MAX_STACKS);

#if TRACE_MODE
BPF_RINGBUF_OUTPUT(sample_events, RINGBUF_PAGES);
#else
BPF_HASH(counts0, struct sample_key, u64, MAX_COUNTS);
BPF_HASH(counts1, struct sample_key, u64, MAX_COUNTS);
#endif

#if FILTER_PIDS
BPF_HASH(pid_filter, u32, u8, MAX_PIDS);
#endif

// Processes seen since user space last forgot them: the first sample of a new tgid is
// announced at once, so its /proc/PID/maps can be read before it has a chance to exit.
BPF_TABLE("lru_hash", u32, u8, known_tgids, MAX_PIDS);
BPF_RINGBUF_OUTPUT(new_tgids, 4);

static __always_inline void bump(u32 set, u32 slot) {
    u32 index = set * COUNTER_SLOTS + slot;
    u64 *value = counters.lookup(&index);
    if (value)
        (*value)++;
}

static __always_inline void count_stack_error(u32 set, int error, u32 base) {
    if (error == -EFAULT)
        bump(set, base);
    else if (error == -EEXIST)
        bump(set, base + 1);
    else if (error == -ENOMEM)
        bump(set, base + 2);
    else
        bump(set, base + 3);
}

int on_sample(struct bpf_perf_event_data *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 tid = (u32)id;

    if (!INCLUDE_IDLE && tid == 0)
        return 0;
#if FILTER_PIDS
    if (!pid_filter.lookup(&tgid))
        return 0;
#endif

    u32 zero = 0;
    u32 *slot = active_set.lookup(&zero);
    u32 set = (slot && *slot) ? 1 : 0;
    bump(set, SAMPLES_SEEN);

    // Look up before inserting: an LRU insert takes a free node first, which costs even when
    // the key is already there.
    if (tgid != 0 && !known_tgids.lookup(&tgid)) {
        u8 yes = 1;
        if (known_tgids.insert(&tgid, &yes) == 0)
            new_tgids.ringbuf_output(&tgid, sizeof(tgid), 0);
    }

    struct sample_key key = {};
    key.tgid = tgid;
    key.tid = tid;
    key.cpu = bpf_get_smp_processor_id();
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    key.user_stack_id = -1;
    key.kernel_stack_id = -1;

    int stack_id;
#if USER_STACKS
    stack_id = set ? stacks1.get_stackid(ctx, BPF_F_USER_STACK) : stacks0.get_stackid(ctx, BPF_F_USER_STACK);
    if (stack_id >= 0)
        key.user_stack_id = stack_id;
    else
        count_stack_error(set, stack_id, USER_NOT_PRESENT);
#endif
#if KERNEL_STACKS
    stack_id = set ? stacks1.get_stackid(ctx, 0) : stacks0.get_stackid(ctx, 0);
    if (stack_id >= 0)
        key.kernel_stack_id = stack_id;
    else
        count_stack_error(set, stack_id, KERNEL_NOT_PRESENT);
#endif

#if TRACE_MODE
    struct sample_event *event = sample_events.ringbuf_reserve(sizeof(struct sample_event));
    if (!event) {
        bump(set, SAMPLES_LOST);
        return 0;
    }
    event->ktime_ns = bpf_ktime_get_ns();
    event->set = set;
    event->pad = 0;
    event->key = key;
    sample_events.ringbuf_submit(event, 0);
#else
    u64 one = 1;
    u64 *count = set ? counts1.lookup(&key) : counts0.lookup(&key);
    if (count) {
        __sync_fetch_and_add(count, 1);
    } else {
        int error = set ? counts1.insert(&key, &one) : counts0.insert(&key, &one);
        if (error) {
            // another CPU may have inserted the same key meanwhile
            count = set ? counts1.lookup(&key) : counts0.lookup(&key);
            if (count) {
                __sync_fetch_and_add(count, 1);
            } else {
                bump(set, COUNTS_MAP_FULL);
                bump(set, SAMPLES_LOST);
            }
        }
    }
#endif
    return 0;
}
