// antiprof's on-CPU sampler, compiled by BCC (in a short-lived child process) with -D options
// from antiprof_core.sources.bpf.program; the agent attaches it and reads its maps itself.
//
// A perf_event program on the software CPU clock, attached on every online CPU. Each sample
// is keyed by {tgid, tid, cpu, user stack, kernel stack, Python stack, comm} and counted in the kernel
// (aggregate mode) or sent through a ring buffer with its ktime (trace mode).
//
// Stacks are stored in hash maps keyed by a 64-bit hash of their addresses, not in BPF stack
// trace maps: a hash map chains its buckets, so two stacks never fight for one bucket (a stack
// trace map drops the second stack of a bucket, which lost stacks even on idle hosts), and a
// hash map can be read and emptied with one batch syscall per few hundred stacks.
//
// Two sets of maps (counts + stacks + counters) are switched by the one-slot array
// `active_set`: user space flips it, waits for programs already running to finish, and then
// drains the set the kernel no longer writes. The program reads the slot once per sample, so
// a sample's counters, count and stacks always land in the same set.
//
// Only BPF helpers and uapi structs: no kernel struct field is read.
//
// User stacks are walked by frame pointers (bpf_get_stack), or, with DWARF_UNWINDER, from the
// unwind tables of the files a process maps (.eh_frame rows, filled in by user space): see the
// "native unwinder" part below.
//
// Options (all given with -D): MAX_STACK_DEPTH, MAX_STACKS, MAX_COUNTS, MAX_PIDS,
// RINGBUF_PAGES, FILTER_PIDS, KERNEL_STACKS, USER_STACKS, INCLUDE_IDLE, TRACE_MODE,
// DWARF_UNWINDER, and with it UNWIND_FP_FALLBACK, UNWIND_ROWS, UNWIND_MAPPINGS, UNWIND_PROCESSES,
// FRAMES_PER_CALL; PYTHON_FRAMES, and with it MAX_PYTHON_DEPTH and PYTHON_PROCESSES.

#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include <linux/sched.h>

// Counter slots, per set, per CPU. Keep in sync with COUNTER_NAMES in antiprof_core/sources/bpf/program.py.
enum counter {
    SAMPLES_SEEN = 0,
    SAMPLES_LOST,          // counts map full, or ring buffer full in trace mode
    USER_NOT_PRESENT,      // -EFAULT: no user stack (kernel thread)
    USER_COLLISION,        // never since stacks are hashed into a hash map; kept so the slots stay put
    USER_MAP_FULL,         // the stacks map is full
    USER_OTHER,
    KERNEL_NOT_PRESENT,    // -EFAULT: the sample hit user mode
    KERNEL_COLLISION,
    KERNEL_MAP_FULL,
    KERNEL_OTHER,
    COUNTS_MAP_FULL,
    UNWIND_FALLBACK,       // the process has no tables loaded (yet): its stack walked by frame pointers
    UNWIND_NO_TABLE,       // frames walked by frame pointers since their code has no table (JIT, stripped)
    UNWIND_NO_ROW,         // a pc no row of its file's table covers: the walk stops
    UNWIND_UNSUPPORTED,    // a rule the walk cannot follow (CFA in another register, an expression)
    UNWIND_BAD_READ,       // a saved register that could not be read, or a frame that does not go up
    UNWIND_DEPTH,          // max_stack_depth frames reached before the outermost frame
    PYTHON_FRAMES_READ,    // interpreter frames recorded (CPython)
    PYTHON_TRUNCATED,      // Python stacks cut at max_python_depth
    PYTHON_NO_THREAD,      // a sample of a CPython process whose thread has no Python thread state
    PYTHON_BAD_READ,       // a thread state or frame that could not be read: the Python stack stops
    COUNTER_SLOTS,
};

// 56 bytes, no implicit padding: the key is compared bytewise by the hash map.
struct sample_key {
    u32 tgid;
    u32 tid;
    u32 cpu;
    u32 pad;
    u64 user_stack;        // hash of the user stack in this set's stacks map; 0: none
    u64 kernel_stack;      // the same for the kernel stack
    u64 python_stack;      // the same for the CPython frames the thread was running
    char comm[TASK_COMM_LEN];
};

struct sample_event {
    u64 ktime_ns;
    u32 set;
    u32 pad;
    struct sample_key key;
};

struct stack_value {
    u32 depth;             // frames used in ip[]
    u32 pad;
    u64 ip[MAX_STACK_DEPTH];
};

BPF_ARRAY(active_set, u32, 1);
BPF_PERCPU_ARRAY(counters, u64, 2 * COUNTER_SLOTS);

BPF_HASH(stacks0, u64, struct stack_value, MAX_STACKS);
BPF_HASH(stacks1, u64, struct stack_value, MAX_STACKS);
BPF_PERCPU_ARRAY(stack_scratch, struct stack_value, 1);  // too big for the 512-byte BPF stack

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

enum announce_reason {
    ANNOUNCE_NEW = 0,       // first sample of the tgid (or first since an exec)
    ANNOUNCE_UNMAPPED = 1,  // the native walk met code outside the mappings it was given
};

struct announcement {
    u32 tgid;
    u32 reason;
};

static __always_inline void announce(u32 tgid, u32 reason) {
    struct announcement message = {.tgid = tgid, .reason = reason};
    new_tgids.ringbuf_output(&message, sizeof(message), 0);
}

static __always_inline void bump(u32 set, u32 slot) {
    u32 index = set * COUNTER_SLOTS + slot;
    u64 *value = counters.lookup(&index);
    if (value)
        (*value)++;
}

static __always_inline void count_stack_error(u32 set, long error, u32 base) {
    if (error == -EFAULT || error == 0)
        bump(set, base);
    else if (error == -E2BIG || error == -ENOMEM)
        bump(set, base + 2);
    else
        bump(set, base + 3);
}

static __always_inline int read_user_u64(u64 *into, u64 address) {
    return bpf_probe_read_user(into, sizeof(*into), (const void *)address);
}

// The stack's key in a stacks map: a 64-bit hash of its addresses, never 0.
static __always_inline u64 hash_stack(struct stack_value *stack, u32 depth, u64 flags) {
    u64 hash = 0x9e3779b97f4a7c15ULL ^ flags ^ depth;
    // a bounded loop (kernel 5.3+; the ring buffers already need 5.8), kept rolled: unrolled,
    // clang reads four addresses per check of depth, past the value's end for the verifier
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < MAX_STACK_DEPTH; i++) {
        if (i >= depth)
            break;
        hash = (hash ^ stack->ip[i]) * 0xff51afd7ed558ccdULL;
        hash ^= hash >> 32;
    }
    return hash ? hash : 1;
}

// Puts the stack in the set's stacks map (once); returns its hash, 0 if it could not be kept.
static __always_inline u64 keep_stack(struct stack_value *stack, u32 depth, u32 set, u64 flags, u32 error_base) {
    u64 hash = hash_stack(stack, depth, flags);
    if (set ? stacks1.lookup(&hash) : stacks0.lookup(&hash))
        return hash;
    long error = set ? stacks1.insert(&hash, stack) : stacks0.insert(&hash, stack);
    if (error && error != -EEXIST) {  // -EEXIST: another CPU stored the same stack meanwhile
        count_stack_error(set, error, error_base);
        return 0;
    }
    return hash;
}

// Stores the current user (frame pointers) or kernel stack; returns its hash, 0 if none.
static __always_inline u64 store_stack(struct bpf_perf_event_data *ctx, u32 set, u64 flags, u32 error_base) {
    u32 zero = 0;
    struct stack_value *stack = stack_scratch.lookup(&zero);
    if (!stack)
        return 0;
    long size = bpf_get_stack(ctx, stack->ip, sizeof(stack->ip), flags);
    if (size <= 0) {
        count_stack_error(set, size, error_base);
        return 0;
    }
    u32 depth = size / sizeof(u64);
    stack->depth = depth;
    stack->pad = 0;
    return keep_stack(stack, depth, set, flags, error_base);
}

// The sample, its key complete: counted in the set's counts map, or sent with its time.
static __always_inline void record_sample(struct sample_key *key, u32 set) {
#if TRACE_MODE
    struct sample_event *event = sample_events.ringbuf_reserve(sizeof(struct sample_event));
    if (!event) {
        bump(set, SAMPLES_LOST);
        return;
    }
    event->ktime_ns = bpf_ktime_get_ns();
    event->set = set;
    event->pad = 0;
    event->key = *key;
    sample_events.ringbuf_submit(event, 0);
#else
    u64 one = 1;
    u64 *count = set ? counts1.lookup(key) : counts0.lookup(key);
    if (count) {
        __sync_fetch_and_add(count, 1);
    } else {
        int error = set ? counts1.insert(key, &one) : counts0.insert(key, &one);
        if (error) {
            // another CPU may have inserted the same key meanwhile
            count = set ? counts1.lookup(key) : counts0.lookup(key);
            if (count) {
                __sync_fetch_and_add(count, 1);
            } else {
                bump(set, COUNTS_MAP_FULL);
                bump(set, SAMPLES_LOST);
            }
        }
    }
#endif
}

#if PYTHON_FRAMES
// ---- CPython frames (PYTHON_FRAMES) -------------------------------------------------------------
//
// For a sample of a process user space found to run CPython 3.11+ (python_processes, keyed by
// tgid), the thread's interpreter frames are read from its memory: _PyRuntime -> the main
// interpreter -> its thread states, the one whose native_thread_id is the sampled thread (the
// GIL holder is tried first on 3.11), then its _PyInterpreterFrame chain through `previous`.
// Each frame is recorded as one u64 in a stack of its own (python_stack in the key):
//   code object address >> 4 (43 bits) | (instruction offset + 2) / 2 (20 bits) | entry (1 bit)
// where entry marks the first frame of one _PyEval_EvalFrameDefault call, so user space can put
// each call's Python frames in place of its native frame. C-stack shim frames (3.12+) are skipped.
// Offsets come from user space (antiprof_core.sources.python): no CPython header is compiled in.

#define PY_NO_OFFSET 0xffffffff
#define PY_FRAME_BYTES 80          // read per frame; user space checks every field used lies in them
#define PY_MAX_THREADS 64          // thread states searched per sample
#define PY_UNKNOWN_OFFSET 0xfffff
#define PY_SHIM 1                  // a C-stack shim frame (3.12+): code 0, entry bit set
#define PY_MAX_CODE_UNITS 0xffffe  // instruction offsets beyond 2 MiB of bytecode are unknown
#define PYTHON_STACK_FLAG (1ULL << 40)  // mixed into the hash: a Python stack never shares a native one's
// Field offsets are masked, not range-checked: no branch per field for the verifier to follow.
#define PY_U64_FIELD(offset) ((offset) & 0x7f)  // <= 127: 8 bytes fit the 136-byte buffer
#define PY_U8_FIELD(offset) ((offset) & 0x7f)

struct python_process {      // 80 bytes; antiprof_core/sources/python/layout.py packs it
    u64 runtime;             // &_PyRuntime in the process
    u64 pidns_dev;           // its PID namespace (kernel dev_t and inode of /proc/PID/ns/pid):
    u64 pidns_ino;           //   CPython keeps thread ids as that namespace numbers them
    u32 tstate_current;      // in _PyRuntime: the GIL holder's thread state (3.11), else PY_NO_OFFSET
    u32 interpreters_head;   // in _PyRuntime
    u32 threads_head;        // in PyInterpreterState
    u32 tstate_next;         // in PyThreadState
    u32 tstate_native_thread_id;
    u32 tstate_cframe;       // PY_NO_OFFSET: the current frame pointer is in the thread state itself
    u32 current_frame;       // in _PyCFrame (3.11, 3.12) or PyThreadState (3.13)
    u32 frame_previous;      // in _PyInterpreterFrame
    u32 frame_code;
    u32 frame_instr;
    u32 frame_owner;
    u32 frame_is_entry;      // PY_NO_OFFSET from 3.12: shim frames mark the calls instead
    u32 owner_cstack;        // the owner value of a shim frame, PY_NO_OFFSET before 3.12
    u32 code_adaptive;       // in PyCodeObject: where the bytecode the instruction pointers point into starts
};

struct python_scratch {
    u8 frame[136];           // PY_FRAME_BYTES read into it; the masks keep every access inside
};

BPF_HASH(python_processes, u32, struct python_process, PYTHON_PROCESSES);
BPF_PERCPU_ARRAY(python_scratch, struct python_scratch, 1);

static __always_inline u64 frame_u64(struct python_scratch *scratch, u32 offset) {
    u64 value;
    __builtin_memcpy(&value, &scratch->frame[PY_U64_FIELD(offset)], sizeof(value));
    return value;
}

// The thread state of the sampled thread, 0 if it has none (a thread CPython does not know).
static __always_inline u64 python_thread_state(struct python_process *py, u32 tid, u32 set) {
    u64 tstate = 0, native = 0;
    if (py->tstate_current != PY_NO_OFFSET) {
        if (!read_user_u64(&tstate, py->runtime + py->tstate_current) && tstate &&
            !read_user_u64(&native, tstate + py->tstate_native_thread_id) && native == tid)
            return tstate;
    }
    u64 interpreter = 0;
    if (read_user_u64(&interpreter, py->runtime + py->interpreters_head) || !interpreter ||
        read_user_u64(&tstate, interpreter + py->threads_head)) {
        bump(set, PYTHON_BAD_READ);
        return 0;
    }
    for (int i = 0; i < PY_MAX_THREADS; i++) {
        if (!tstate)
            break;
        if (read_user_u64(&native, tstate + py->tstate_native_thread_id)) {
            bump(set, PYTHON_BAD_READ);
            return 0;
        }
        if (native == tid)
            return tstate;
        if (read_user_u64(&tstate, tstate + py->tstate_next)) {
            bump(set, PYTHON_BAD_READ);
            return 0;
        }
    }
    bump(set, PYTHON_NO_THREAD);
    return 0;
}

// Walks the thread's interpreter frames into `stack`, leaf first; returns how many.
static __always_inline u32 walk_python_frames(struct python_process *py, u64 tstate, struct stack_value *stack,
                                              u32 set) {
    u32 zero = 0;
    struct python_scratch *scratch = python_scratch.lookup(&zero);
    if (!scratch)
        return 0;
    u64 frame = 0;
    if (py->tstate_cframe != PY_NO_OFFSET) {
        u64 cframe = 0;
        if (read_user_u64(&cframe, tstate + py->tstate_cframe) ||
            (cframe && read_user_u64(&frame, cframe + py->current_frame))) {
            bump(set, PYTHON_BAD_READ);
            return 0;
        }
    } else if (read_user_u64(&frame, tstate + py->current_frame)) {
        bump(set, PYTHON_BAD_READ);
        return 0;
    }
    u32 previous = py->frame_previous, code_field = py->frame_code, instr_field = py->frame_instr;
    u32 owner_field = PY_U8_FIELD(py->frame_owner), entry_field = PY_U8_FIELD(py->frame_is_entry);
    u32 has_entry_field = py->frame_is_entry != PY_NO_OFFSET;
    u32 cstack = py->owner_cstack;  // PY_NO_OFFSET never equals a u8
    u64 adaptive = py->code_adaptive;
    u32 depth = 0;
    // One slot per frame, shims included (user space drops them and marks the frame above as its
    // call's entry): depth is the loop's count, so the verifier's paths never split on it.
#pragma clang loop unroll(disable)
    for (int i = 0; i < MAX_PYTHON_DEPTH; i++) {
        if (!frame)
            break;
        if (bpf_probe_read_user(scratch->frame, PY_FRAME_BYTES, (const void *)frame)) {
            bump(set, PYTHON_BAD_READ);
            break;
        }
        u64 value = PY_SHIM;
        if (scratch->frame[owner_field] != cstack) {
            u64 code = frame_u64(scratch, code_field);
            u64 distance = frame_u64(scratch, instr_field) + 2 - (code + adaptive);
            u64 units = distance <= 2 * PY_MAX_CODE_UNITS ? distance / 2 : PY_UNKNOWN_OFFSET;
            u64 entry = has_entry_field && scratch->frame[entry_field] ? 1 : 0;
            value = ((code >> 4) << 21) | (units << 1) | entry;
        }
        stack->ip[i] = value;
        depth = i + 1;
        frame = frame_u64(scratch, previous);
    }
    if (frame && depth == MAX_PYTHON_DEPTH)
        bump(set, PYTHON_TRUNCATED);
    return depth;
}

// The hash of the sampled thread's Python stack in the set's stacks map, 0 if none.
static __always_inline u64 store_python_stack(u32 tgid, u32 tid, u32 set) {
    struct python_process *py = python_processes.lookup(&tgid);
    if (!py)
        return 0;
    if (py->pidns_ino) {  // the tid as the process's own PID namespace numbers it
        struct bpf_pidns_info ns;
        if (bpf_get_ns_current_pid_tgid(py->pidns_dev, py->pidns_ino, &ns, sizeof(ns)) == 0)
            tid = ns.pid;
    }
    u64 tstate = python_thread_state(py, tid, set);
    if (!tstate)
        return 0;
    u32 zero = 0;
    struct stack_value *stack = stack_scratch.lookup(&zero);
    if (!stack)
        return 0;
    u32 depth = walk_python_frames(py, tstate, stack, set);
    if (depth == 0 || depth > MAX_PYTHON_DEPTH)
        return 0;
    stack->depth = depth;
    stack->pad = 0;
    u32 index = set * COUNTER_SLOTS + PYTHON_FRAMES_READ;
    u64 *read = counters.lookup(&index);
    if (read)
        *read += depth;
    return keep_stack(stack, depth, set, PYTHON_STACK_FLAG, USER_NOT_PRESENT);
}
#endif  // PYTHON_FRAMES

#if DWARF_UNWINDER
// ---- The native unwinder (DWARF_UNWINDER) ------------------------------------------------------
//
// User space turns each file's .eh_frame into rows (antiprof_core.sources.unwind: one row says
// how to find the caller's CFA, return address and rbp from a pc on) and fills three maps: the
// rows of every loaded file, the executable mappings of every process it has planned (sorted,
// each pointing at its file's rows), and per process where its mappings are. A sample of a
// planned process is walked frame by frame: find the mapping of the pc, binary-search its rows,
// apply the row, read the return address and saved rbp from the user stack. Code without a table
// (JIT, stripped files) is stepped by frame pointers in "auto" mode. A process not planned yet is
// walked by frame pointers with bpf_get_stack, and counted (unwind_fallback).
//
// The walk runs FRAMES_PER_CALL frames per program run, then tail-calls itself with its state in
// a per-CPU scratch (a perf_event program cannot nest on a CPU): at most 33 runs, enough for
// MAX_STACK_DEPTH frames, each run small enough for the verifier. Keep the structs in sync with
// antiprof_core/sources/unwind (rows.py kinds; the map layout in the maps writer).

enum cfa_kind {  // rows.CfaKind
    CFA_RSP = 1,
    CFA_RBP = 2,
    CFA_PLT = 3,
    CFA_DEREF_RBP = 4,
    CFA_FIRST_STOP = 16,
    CFA_NO_FDE = 16,
    CFA_OUTERMOST = 17,
};

enum rbp_kind {  // rows.RbpKind
    RBP_UNCHANGED = 0,
    RBP_AT_CFA = 1,
    RBP_UNKNOWN = 2,
    RBP_AT_RBP = 3,
};

struct unwind_row {          // 16 bytes
    u32 pc;                  // file address minus the table's base
    s32 cfa_offset;
    s32 rbp_offset;
    u8 cfa_kind;
    u8 rbp_kind;
    u8 param;
    u8 ra_offset;            // signed (s8); u8 here since BCC's map key/value parser has no signed char
};

struct unwind_mapping {      // 32 bytes
    u64 start;               // runtime addresses [start, end)
    u64 end;
    u64 bias;                // runtime pc - bias = row pc
    u32 row_start;
    u32 row_count;           // 0: no table; frame pointers
};

struct unwind_process {
    u32 first;               // its mappings: unwind_mappings[first, first + count), sorted by start
    u32 count;
};

struct unwind_state {
    struct sample_key key;
    struct unwind_process process;
    u64 rip;
    u64 rsp;
    u64 rbp;
    u32 set;
    u32 rbp_known;
    struct stack_value stack;  // frames so far; stack.depth counts them
};

#define MAPPING_SEARCH_STEPS 9   // 256 mappings per process
#define ROW_SEARCH_STEPS 24      // 16M rows per file

BPF_ARRAY(unwind_rows, struct unwind_row, UNWIND_ROWS);
BPF_ARRAY(unwind_mappings, struct unwind_mapping, UNWIND_MAPPINGS);
BPF_HASH(unwind_processes, u32, struct unwind_process, UNWIND_PROCESSES);
BPF_PERCPU_ARRAY(unwind_scratch, struct unwind_state, 1);
BPF_PROG_ARRAY(unwind_programs, 1);
// When each process last asked for its mappings to be read again (ktime): at most once a second.
BPF_TABLE("lru_hash", u32, u64, unwind_replan_asked, UNWIND_PROCESSES);

#define REPLAN_INTERVAL_NS 1000000000ULL

// The pc is in none of the process's mappings with tables: a library loaded (or the loader had
// not mapped it yet) since the agent read /proc/PID/maps, or code with no table (JIT, stripped).
// Ask the agent to read the mappings again, rate-limited, for JIT code asks every second.
static __always_inline void ask_for_replan(u32 tgid) {
    u64 now = bpf_ktime_get_ns();
    u64 *asked = unwind_replan_asked.lookup(&tgid);
    if (asked && now - *asked < REPLAN_INTERVAL_NS)
        return;
    unwind_replan_asked.update(&tgid, &now);
    announce(tgid, ANNOUNCE_UNMAPPED);
}

enum step_result {
    STEP_NEXT = 0,           // a caller was found and recorded
    STEP_DONE = 1,           // the walk ended (at the outermost frame, or counted why)
};

// Records the caller's registers after a step; ends the walk when the frames stop going up.
static __always_inline int record_caller(struct unwind_state *state, u64 rip, u64 rsp, u64 rbp, u32 rbp_known) {
    if (rip == 0)
        return STEP_DONE;  // the outermost frame's return address
    if (rsp <= state->rsp) {
        bump(state->set, UNWIND_BAD_READ);  // a caller's frame is above its callee's: garbage
        return STEP_DONE;
    }
    u32 depth = state->stack.depth;
    if (depth >= MAX_STACK_DEPTH) {
        bump(state->set, UNWIND_DEPTH);
        return STEP_DONE;
    }
    state->stack.ip[depth] = rip;
    state->stack.depth = depth + 1;
    state->rip = rip;
    state->rsp = rsp;
    state->rbp = rbp;
    state->rbp_known = rbp_known;
    return STEP_NEXT;
}

// The caller of a frame with frame pointers: [rbp] is the caller's rbp, [rbp + 8] the return address.
static __always_inline int frame_pointer_step(struct unwind_state *state) {
#if UNWIND_FP_FALLBACK
    bump(state->set, UNWIND_NO_TABLE);
    u64 rbp = state->rbp;
    if (!state->rbp_known || rbp == 0)
        return STEP_DONE;
    u64 saved[2];
    if (bpf_probe_read_user(saved, sizeof(saved), (const void *)rbp)) {
        bump(state->set, UNWIND_BAD_READ);
        return STEP_DONE;
    }
    return record_caller(state, saved[1], rbp + 16, saved[0], 1);
#else
    bump(state->set, UNWIND_NO_TABLE);
    return STEP_DONE;
#endif
}

// One frame: the caller's rip, rsp and rbp from the row in force at this frame's pc.
static __always_inline int unwind_step_one(struct unwind_state *state) {
    u64 pc = state->rip;
    // A caller's pc is a return address: look up the call instruction (one byte back), which a
    // call at the very end of a function needs.
    u64 lookup_pc = state->stack.depth > 1 ? pc - 1 : pc;

    u32 low = 0, high = state->process.count;
    for (int i = 0; i < MAPPING_SEARCH_STEPS; i++) {
        if (low >= high)
            break;
        u32 middle = (low + high) / 2;
        u32 index = state->process.first + middle;
        struct unwind_mapping *mapping = unwind_mappings.lookup(&index);
        if (!mapping)
            return STEP_DONE;
        if (mapping->start <= lookup_pc)
            low = middle + 1;
        else
            high = middle;
    }
    if (low == 0) {
        ask_for_replan(state->key.tgid);
        return frame_pointer_step(state);
    }
    u32 found = state->process.first + low - 1;
    struct unwind_mapping *mapping = unwind_mappings.lookup(&found);
    if (!mapping || lookup_pc >= mapping->end || mapping->row_count == 0) {
        ask_for_replan(state->key.tgid);
        return frame_pointer_step(state);
    }
    u64 relative = lookup_pc - mapping->bias;
    u32 row_start = mapping->row_start;
    u32 row_count = mapping->row_count;
    if (relative >> 32) {
        bump(state->set, UNWIND_NO_ROW);
        return STEP_DONE;
    }

    low = 0;
    high = row_count;
    for (int i = 0; i < ROW_SEARCH_STEPS; i++) {
        if (low >= high)
            break;
        u32 middle = (low + high) / 2;
        u32 index = row_start + middle;
        struct unwind_row *row = unwind_rows.lookup(&index);
        if (!row)
            return STEP_DONE;
        if (row->pc <= (u32)relative)
            low = middle + 1;
        else
            high = middle;
    }
    u32 row_index = row_start + low - 1;
    struct unwind_row *row = low ? unwind_rows.lookup(&row_index) : 0;
    if (!row) {
        bump(state->set, UNWIND_NO_ROW);
        return STEP_DONE;
    }
    u8 cfa_kind = row->cfa_kind;
    u8 rbp_kind = row->rbp_kind;
    s64 cfa_offset = row->cfa_offset;
    s64 rbp_offset = row->rbp_offset;
    s64 ra_offset = (s8)row->ra_offset;
    u8 param = row->param;

    if (cfa_kind >= CFA_FIRST_STOP) {
        if (cfa_kind == CFA_NO_FDE)
            bump(state->set, UNWIND_NO_ROW);
        else if (cfa_kind != CFA_OUTERMOST)
            bump(state->set, UNWIND_UNSUPPORTED);
        return STEP_DONE;
    }
    u64 cfa;
    if (cfa_kind == CFA_RSP) {
        cfa = state->rsp + cfa_offset;
    } else if (cfa_kind == CFA_PLT) {
        // the PLT's expression: rsp + 8, and 8 more from the byte `param` of its 16-byte entry on
        cfa = state->rsp + cfa_offset + (((pc & 15) >= param) ? 8 : 0);
    } else {
        if (!state->rbp_known) {
            bump(state->set, UNWIND_UNSUPPORTED);
            return STEP_DONE;
        }
        if (cfa_kind == CFA_RBP) {
            cfa = state->rbp + cfa_offset;
        } else if (cfa_kind == CFA_DEREF_RBP) {
            if (read_user_u64(&cfa, state->rbp + cfa_offset)) {
                bump(state->set, UNWIND_BAD_READ);
                return STEP_DONE;
            }
        } else {
            bump(state->set, UNWIND_UNSUPPORTED);
            return STEP_DONE;
        }
    }
    u64 return_address;
    if (read_user_u64(&return_address, cfa + ra_offset)) {
        bump(state->set, UNWIND_BAD_READ);
        return STEP_DONE;
    }
    u64 rbp = state->rbp;
    u32 rbp_known = state->rbp_known;
    if (rbp_kind == RBP_AT_CFA) {
        if (read_user_u64(&rbp, cfa + rbp_offset)) {
            bump(state->set, UNWIND_BAD_READ);
            return STEP_DONE;
        }
        rbp_known = 1;
    } else if (rbp_kind == RBP_AT_RBP) {
        if (!rbp_known || read_user_u64(&rbp, state->rbp + rbp_offset)) {
            bump(state->set, UNWIND_BAD_READ);
            return STEP_DONE;
        }
    } else if (rbp_kind == RBP_UNKNOWN) {
        rbp_known = 0;
    }
    return record_caller(state, return_address, cfa, rbp, rbp_known);
}

// The walk ended: keep the stack and record the sample.
static __always_inline void finish_native_walk(struct unwind_state *state) {
    u32 set = state->set ? 1 : 0;
    u32 depth = state->stack.depth;
    if (depth > MAX_STACK_DEPTH)
        depth = MAX_STACK_DEPTH;
    state->stack.pad = 0;
    state->key.user_stack = keep_stack(&state->stack, depth, set, BPF_F_USER_STACK, USER_NOT_PRESENT);
    record_sample(&state->key, set);
}

int unwind_frames(struct bpf_perf_event_data *ctx) {
    u32 zero = 0;
    struct unwind_state *state = unwind_scratch.lookup(&zero);
    if (!state)
        return 0;
    for (int i = 0; i < FRAMES_PER_CALL; i++) {
        if (unwind_step_one(state) == STEP_DONE) {
            finish_native_walk(state);
            return 0;
        }
    }
    unwind_programs.call(ctx, 0);
    // Only when the tail-call limit (33 runs) is reached: keep what was walked.
    bump(state->set, UNWIND_DEPTH);
    finish_native_walk(state);
    return 0;
}

// Starts the walk of a sample's user stack from the task's user registers. Returns 1 when the
// walk took the sample over (it records it when it ends), 0 when the caller records it itself.
static __always_inline int start_native_walk(struct bpf_perf_event_data *ctx, u32 set, struct sample_key *key) {
    u32 tgid = key->tgid;
    struct unwind_process *process = unwind_processes.lookup(&tgid);
    if (!process) {
        bump(set, UNWIND_FALLBACK);
        return 0;
    }
    u32 zero = 0;
    struct unwind_state *state = unwind_scratch.lookup(&zero);
    if (!state)
        return 0;
    // The registers of the task's user mode, whether the sample hit user or kernel mode.
    struct pt_regs regs;
    struct pt_regs *user_regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
    if (bpf_probe_read_kernel(&regs, sizeof(regs), user_regs) || (regs.cs & 3) != 3)
        return 0;  // a kernel thread: bpf_get_stack counts it as having no user stack
    state->key = *key;
    state->process = *process;
    state->set = set;
    state->rip = regs.ip;
    state->rsp = regs.sp;
    state->rbp = regs.bp;
    state->rbp_known = 1;
    state->stack.ip[0] = regs.ip;
    state->stack.depth = 1;
    unwind_programs.call(ctx, 0);
    // The tail call failed (the program array is empty): frame pointers after all.
    bump(set, UNWIND_FALLBACK);
    return 0;
}
#endif  // DWARF_UNWINDER

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
            announce(tgid, ANNOUNCE_NEW);
    }

    struct sample_key key;
    __builtin_memset(&key, 0, sizeof(key));
    key.tgid = tgid;
    key.tid = tid;
    key.cpu = bpf_get_smp_processor_id();
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
#if KERNEL_STACKS
    key.kernel_stack = store_stack(ctx, set, 0, KERNEL_NOT_PRESENT);
#endif
#if USER_STACKS && PYTHON_FRAMES
    key.python_stack = store_python_stack(tgid, tid, set);
#endif
#if USER_STACKS && DWARF_UNWINDER
    if (start_native_walk(ctx, set, &key))
        return 0;  // the walk records the sample when it ends
#endif
#if USER_STACKS
    key.user_stack = store_stack(ctx, set, BPF_F_USER_STACK, USER_NOT_PRESENT);
#endif
    record_sample(&key, set);
    return 0;
}

// ---- exec ------------------------------------------------------------------------------------
// An exec replaces a process's code under the same PID. Forgetting the process here makes its
// next sample announce it again (new_tgids), so the agent reads its names and mappings anew;
// until its new unwind tables are in, it is walked by frame pointers and counted as a fallback,
// never with the old program's tables. Raw tracepoint sched_process_exec: no kernel struct read.
int on_exec(void *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    known_tgids.delete(&tgid);
#if DWARF_UNWINDER
    unwind_processes.delete(&tgid);
#endif
#if PYTHON_FRAMES
    python_processes.delete(&tgid);
#endif
    return 0;
}
