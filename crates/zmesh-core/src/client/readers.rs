//! Provides [`Readers`], the one waker a client connection's socket is polled with, and the
//! hand-off of the socket between the connection's reader task and a caller reading for
//! itself (see `ConnShared::poll_reply`).
//!
//! The `zeromq` crate keeps one waker per socket, the last poller's. Registering this one
//! for every poll means the reader task never misses a message, so a caller that stops
//! being polled (left in a `select!`, say) can never hold up other calls; the caller is
//! woken too, and on a `current_thread` runtime it runs first, so its own reply usually
//! reaches it without the reader task's help.
//!
//! A caller alone on its connection (back-to-back calls) needs no reader task: only its
//! own events can arrive. Waking the task anyway costs a task poll per call, and because
//! that task then runs before the socket's writer task, it delays the next request's write.
//! So while the caller is *alone*, a message wakes the caller only.
//!
//! A caller that leaves with its own reply has not polled the socket since, so the socket
//! has no waker registered: it is *unarmed*. With other calls open the caller wakes the
//! task, which polls on; with none it leaves the flag instead, and the next call reads for
//! itself or, if it shares the socket with another, wakes the task when it registers.
//!
//! Invariants (checked over every interleaving by the model test below):
//!
//! 1. `alone` is set only by a caller that is the connection's only open call, holds the
//!    socket and has registered its waker in `caller` ([`Readers::enter_alone`], under the
//!    `pending` lock).
//! 2. Every way out of `alone` wakes the reader task, or leaves the socket `unarmed` when no
//!    call is open: a second call registering ([`Readers::call_joins`]), the caller leaving
//!    with its reply ([`Readers::leave_with_reply`]), the caller finishing otherwise or
//!    dropping its call ([`Readers::leave_alone`]), a turn's worth of other calls' events
//!    ([`Readers::yield_to_task`]).
//! 3. `unarmed` is set only when no call is open; the next call to register beside another
//!    clears it and wakes the task ([`Readers::call_joins`]), and a caller that polls the
//!    socket clears it ([`Readers::enter_alone`]).
//! 4. Hence a message arriving on the socket always wakes someone who will poll it: the
//!    lone caller, or the reader task; and while another call is open the reader task is
//!    never left unwoken with the socket unarmed.
//!
//! The flags are set under the connection's `pending` lock and read without it on the
//! socket's wake path; the fast path adds no lock and no atomic beyond these.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};

use futures::task::AtomicWaker;

/// Who is woken when the socket has a message: the reader task and the caller that last
/// waited on the socket, if any; or that caller alone while it is the connection's only
/// open call (see the module doc for the rules).
#[derive(Default)]
pub(super) struct Readers {
    task: AtomicWaker,
    caller: AtomicWaker,
    /// Set (under the `pending` lock) only by a caller that is the only open call, holds
    /// the socket and has registered in `caller`.
    alone: AtomicBool,
    /// Set (under the `pending` lock) when the last poll of the socket returned a message
    /// and nobody will poll it again until a call needs it.
    unarmed: AtomicBool,
}

/// Clears `flag`, returning whether it was set; the relaxed load spares the atomic swap
/// (a write to a line every caller reads) when it is not. A caller that holds the
/// `pending` lock, under which the flags are set, sees every set; one that set the flag
/// itself sees its own.
#[inline]
fn take_flag(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed) && flag.swap(false, Ordering::AcqRel)
}

impl Wake for Readers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.alone.load(Ordering::Acquire)
            && let Some(caller) = self.caller.take()
        {
            caller.wake();
            return;
        }
        // The caller first: woken first, it is polled first.
        self.caller.wake();
        self.task.wake();
    }
}

impl Readers {
    /// The reader task is about to poll the socket.
    #[inline]
    pub(super) fn register_task(&self, waker: &Waker) {
        self.task.register(waker);
    }

    /// Wakes the reader task (to read on, or to read for a call that does not).
    #[inline]
    pub(super) fn wake_task(&self) {
        self.task.wake();
    }

    /// A call registers while others are open (under the `pending` lock): it relies on the
    /// reader task, which must be woken if a lone caller was reading (it may stop being
    /// polled now) or left the socket unarmed.
    #[inline]
    pub(super) fn call_joins(&self) {
        let was_alone = take_flag(&self.alone);
        if take_flag(&self.unarmed) || was_alone {
            self.task.wake();
        }
    }

    /// The only open call's caller is about to read the socket itself (under the `pending`
    /// lock, holding the socket): the socket's next message wakes it alone.
    #[inline]
    pub(super) fn enter_alone(&self, caller: &Waker) {
        self.caller.register(caller);
        // Under the `pending` lock: a call registering after this sees the flag and
        // wakes the reader task; one registered before was counted by the caller.
        self.alone.store(true, Ordering::Release);
        // This caller polls the socket now, so it will be armed again or read on.
        self.unarmed.store(false, Ordering::Relaxed);
    }

    /// The lone caller took its reply (or its call's failure) from the socket and stops
    /// reading, leaving the socket unarmed. `pending` is the connection's lock, held since
    /// the reply was taken; `others_open` whether calls other than this one are open. Their
    /// events may be buffered behind the last message taken: the reader task takes them
    /// (woken once the lock is released). With none open, they can only be late events for
    /// closed calls, and whoever reads next takes them.
    #[inline]
    pub(super) fn leave_with_reply<G>(&self, pending: G, others_open: bool) {
        self.alone.store(false, Ordering::Release);
        self.caller.take();
        if others_open {
            drop(pending);
            self.task.wake();
        } else {
            self.unarmed.store(true, Ordering::Release);
        }
    }

    /// Leaves the state in which a lone caller is woken instead of the reader task, and
    /// wakes the task if it was in that state. Always safe: it restores the default.
    #[inline]
    pub(super) fn leave_alone(&self) {
        if take_flag(&self.alone) {
            self.caller.take();
            self.task.wake();
        }
    }

    /// The lone caller read a turn's worth of other calls' events: the reader task reads
    /// on.
    #[inline]
    pub(super) fn yield_to_task(&self) {
        self.leave_alone();
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    //! An exhaustive model of one connection with two calls: every interleaving of the
    //! calls registering, polling (reading the socket alone as `ConnShared::poll_reply`
    //! does), dropping early, the server's heartbeats and replies arriving, and the reader
    //! task polling, run over the real [`Readers`] with counting wakers; the module's
    //! invariants are checked in every state reached.

    use std::collections::HashSet;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    const CALLS: usize = 2;
    /// Messages a lone caller reads before it leaves the rest to the reader task (the
    /// connection reads `MESSAGES_PER_TURN`; one makes the model reach that path).
    const TURN: usize = 1;

    /// Counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Call {
        NotStarted,
        /// Registered: in the connection's `pending` map until its reply is delivered.
        Open,
        /// Took its result, or was dropped.
        Done,
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Register(usize),
        Poll(usize),
        Drop(usize),
        Heartbeat(usize),
        Reply(usize),
        Task,
    }

    /// One state of the model; [`Readers`] is rebuilt from it for each step.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct State {
        calls: [Call; CALLS],
        /// The call's reply was handed over through its slot (it left `pending`).
        slot: [bool; CALLS],
        heartbeat_sent: [bool; CALLS],
        reply_sent: [bool; CALLS],
        /// Messages in the socket, `(call, terminal)`.
        queue: Vec<(usize, bool)>,
        /// The socket's last poll returned `Pending`: its next message wakes `Readers`.
        armed: bool,
        alone: bool,
        unarmed: bool,
        task_registered: bool,
        caller_registered: Option<usize>,
        task_woken: bool,
        caller_woken: [bool; CALLS],
    }

    impl State {
        fn initial() -> Self {
            Self {
                calls: [Call::NotStarted; CALLS],
                slot: [false; CALLS],
                heartbeat_sent: [false; CALLS],
                reply_sent: [false; CALLS],
                queue: Vec::new(),
                armed: false,
                alone: false,
                unarmed: false,
                task_registered: false,
                caller_registered: None,
                // Spawned with the connection: it polls once.
                task_woken: true,
                caller_woken: [false; CALLS],
            }
        }

        /// In the `pending` map.
        fn pending(&self, call: usize) -> bool {
            self.calls[call] == Call::Open && !self.slot[call]
        }

        fn pending_len(&self) -> usize {
            (0..CALLS).filter(|&c| self.pending(c)).count()
        }

        fn ops(&self) -> Vec<Op> {
            let mut ops = Vec::new();
            for c in 0..CALLS {
                match self.calls[c] {
                    Call::NotStarted if c == 0 || self.calls[c - 1] != Call::NotStarted => {
                        ops.push(Op::Register(c));
                    }
                    Call::Open => {
                        if self.caller_woken[c] {
                            ops.push(Op::Poll(c));
                        }
                        ops.push(Op::Drop(c));
                    }
                    _ => {}
                }
                if self.calls[c] != Call::NotStarted && !self.reply_sent[c] {
                    if !self.heartbeat_sent[c] {
                        ops.push(Op::Heartbeat(c));
                    }
                    ops.push(Op::Reply(c));
                }
            }
            if self.task_woken {
                ops.push(Op::Task);
            }
            ops
        }
    }

    /// The real [`Readers`] in a model state, with the wakers of the task and the callers.
    struct World {
        readers: Arc<Readers>,
        socket: Waker,
        task: Arc<Count>,
        task_waker: Waker,
        callers: Vec<Arc<Count>>,
        caller_wakers: Vec<Waker>,
        state: State,
    }

    impl World {
        fn new(state: State) -> Self {
            let readers = Arc::new(Readers::default());
            let task = Arc::new(Count::default());
            let callers: Vec<Arc<Count>> = (0..CALLS).map(|_| Arc::default()).collect();
            let task_waker = Waker::from(task.clone());
            let caller_wakers: Vec<Waker> =
                callers.iter().map(|c| Waker::from(c.clone())).collect();
            readers.alone.store(state.alone, Ordering::SeqCst);
            readers.unarmed.store(state.unarmed, Ordering::SeqCst);
            if state.task_registered {
                readers.task.register(&task_waker);
            }
            if let Some(c) = state.caller_registered {
                readers.caller.register(&caller_wakers[c]);
            }
            Self {
                socket: Waker::from(readers.clone()),
                readers,
                task,
                task_waker,
                callers,
                caller_wakers,
                state,
            }
        }

        /// The model state after the step, with the wakes it caused.
        fn into_state(self) -> State {
            let mut state = self.state;
            state.alone = self.readers.alone.load(Ordering::SeqCst);
            state.unarmed = self.readers.unarmed.load(Ordering::SeqCst);
            state.task_registered = self.readers.task.take().is_some();
            state.caller_registered = self.readers.caller.take().map(|w| {
                (0..CALLS)
                    .find(|&c| w.will_wake(&self.caller_wakers[c]))
                    .expect("a caller's waker")
            });
            state.task_woken |= self.task.0.load(Ordering::SeqCst) > 0;
            for c in 0..CALLS {
                state.caller_woken[c] |= self.callers[c].0.load(Ordering::SeqCst) > 0;
            }
            state
        }

        /// A message reaches the socket.
        fn arrive(&mut self, call: usize, terminal: bool) {
            self.state.queue.push((call, terminal));
            if self.state.armed {
                self.state.armed = false;
                let waiting = self.state.pending_len();
                let lone = (0..CALLS).find(|&c| self.state.pending(c));
                self.socket.wake_by_ref();
                // Invariant 4: someone who will poll the socket is woken (now or before).
                let task = self.state.task_woken || self.task.0.load(Ordering::SeqCst) > 0;
                let caller_reads = waiting == 1
                    && lone.is_some_and(|c| {
                        self.state.caller_woken[c] || self.callers[c].0.load(Ordering::SeqCst) > 0
                    });
                assert!(
                    waiting == 0 || task || caller_reads,
                    "a message woke nobody who reads: {:?}",
                    self.state
                );
            }
        }

        /// What the reader (task or caller) does with one message; true if it is `own`'s
        /// reply.
        fn handle(&mut self, (call, terminal): (usize, bool), own: Option<usize>) -> bool {
            if !terminal || !self.state.pending(call) {
                return false;
            }
            if own == Some(call) {
                return true;
            }
            self.state.slot[call] = true;
            self.caller_wakers[call].wake_by_ref();
            false
        }

        fn poll_socket(&mut self) -> Option<(usize, bool)> {
            if self.state.queue.is_empty() {
                self.state.armed = true;
                return None;
            }
            Some(self.state.queue.remove(0))
        }

        fn step(&mut self, op: Op) {
            match op {
                Op::Register(c) => {
                    if self.state.pending_len() > 0 {
                        self.readers.call_joins();
                    }
                    self.state.calls[c] = Call::Open;
                    // The call's future is polled next.
                    self.caller_wakers[c].wake_by_ref();
                }
                Op::Poll(c) => {
                    self.state.caller_woken[c] = false;
                    self.poll_reply(c);
                }
                Op::Drop(c) => {
                    self.state.calls[c] = Call::Done;
                    self.readers.leave_alone();
                }
                Op::Heartbeat(c) => {
                    self.state.heartbeat_sent[c] = true;
                    self.arrive(c, false);
                }
                Op::Reply(c) => {
                    self.state.reply_sent[c] = true;
                    self.arrive(c, true);
                }
                Op::Task => {
                    self.state.task_woken = false;
                    self.readers.register_task(&self.task_waker.clone());
                    while let Some(message) = self.poll_socket() {
                        self.handle(message, None);
                    }
                }
            }
        }

        /// `ConnShared::poll_reply` over the model.
        fn poll_reply(&mut self, c: usize) {
            if self.state.slot[c] {
                self.readers.leave_alone();
                self.state.calls[c] = Call::Done;
                return;
            }
            if self.state.pending_len() > 1 {
                return;
            }
            self.readers.enter_alone(&self.caller_wakers[c].clone());
            for _ in 0..TURN {
                let Some(message) = self.poll_socket() else {
                    return;
                };
                if self.handle(message, Some(c)) {
                    self.state.calls[c] = Call::Done;
                    let others_open = self.state.pending_len() > 0;
                    self.readers.leave_with_reply((), others_open);
                    return;
                }
            }
            self.readers.yield_to_task();
        }
    }

    /// The invariants every state must hold.
    fn check(state: &State) {
        // Invariant 1.
        assert!(!state.alone || state.pending_len() <= 1, "{state:?}");
        // Invariant 3: an unarmed socket with a call open only until that call polls.
        assert!(
            !state.unarmed || (0..CALLS).all(|c| !state.pending(c) || state.caller_woken[c]),
            "{state:?}"
        );
        assert!(!state.armed || state.queue.is_empty(), "{state:?}");
        // No lost wake-up: with nothing left to happen but dropping calls, no call is open.
        let ops = state.ops();
        if ops.iter().all(|op| matches!(op, Op::Drop(_))) {
            assert!(
                state.calls.iter().all(|&c| c != Call::Open),
                "a call waits for a reply nobody will read: {state:?}"
            );
        }
    }

    #[test]
    fn every_interleaving_keeps_the_invariants() {
        let mut seen = HashSet::new();
        let mut todo = vec![State::initial()];
        let mut finished = 0;
        while let Some(state) = todo.pop() {
            if !seen.insert(state.clone()) {
                continue;
            }
            check(&state);
            let ops = state.ops();
            if ops.is_empty() {
                finished += 1;
            }
            for op in ops {
                let mut world = World::new(state.clone());
                world.step(op);
                todo.push(world.into_state());
            }
        }
        assert!(finished > 0);
        println!("{} states, {finished} final", seen.len());
    }
}
