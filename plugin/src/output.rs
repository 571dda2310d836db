//! The block's outgoing events, collected and then sent to the host in time order.
//!
//! Hosts require output events sorted by sample offset, but a block's events come from several
//! places (pass-through input, released notes, scheduled NoteOns and NoteOffs). They are gathered
//! here with their sample offset and an insertion number, then sorted in place: the insertion
//! number keeps a NoteOff that was emitted before a NoteOn at the same sample ahead of it (a
//! retriggered key must stop before it starts again).

/// A generated note edge at a sample offset of the current block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutNote {
    On {
        timing: u32,
        channel: u8,
        key: u8,
        velocity: f32,
    },
    Off {
        timing: u32,
        channel: u8,
        key: u8,
    },
}

impl OutNote {
    pub fn timing(&self) -> u32 {
        match *self {
            OutNote::On { timing, .. } | OutNote::Off { timing, .. } => timing,
        }
    }
}

/// A fixed-capacity, sortable list of a block's outgoing events. Its storage is allocated once,
/// off the audio thread; pushing never allocates.
pub struct OutQueue<E> {
    events: Vec<(u32, u32, E)>,
    /// Room kept for NoteOffs: a full queue refuses NoteOns first, so that releasing every
    /// sounding note always fits and no note is left hanging.
    reserved_for_offs: usize,
}

impl<E> OutQueue<E> {
    pub fn with_capacity(capacity: usize, reserved_for_offs: usize) -> Self {
        OutQueue {
            events: Vec::with_capacity(capacity + reserved_for_offs),
            reserved_for_offs,
        }
    }

    /// Queues an event that starts something (NoteOn, pass-through); refused when only the room
    /// reserved for NoteOffs is left.
    pub fn push(&mut self, timing: u32, event: E) -> bool {
        if self.events.len() + self.reserved_for_offs >= self.events.capacity() {
            return false;
        }
        self.push_unchecked(timing, event);
        true
    }

    /// Queues an event that ends something (NoteOff); may use the reserved room.
    pub fn push_off(&mut self, timing: u32, event: E) -> bool {
        if self.events.len() >= self.events.capacity() {
            return false;
        }
        self.push_unchecked(timing, event);
        true
    }

    fn push_unchecked(&mut self, timing: u32, event: E) {
        let order = self.events.len() as u32;
        self.events.push((timing, order, event));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.events.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Sorts by sample offset (stable through the insertion number; `sort_unstable` because the
    /// stable sort allocates) and hands every event to `send`, leaving the queue empty.
    pub fn drain_sorted(&mut self, mut send: impl FnMut(E)) {
        self.events
            .sort_unstable_by_key(|&(timing, order, _)| (timing, order));
        for (_, _, event) in self.events.drain(..) {
            send(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_by_time_then_insertion() {
        let mut queue = OutQueue::with_capacity(8, 0);
        queue.push(5, "b");
        queue.push(1, "a");
        queue.push(5, "c");
        queue.push(0, "first");
        let mut sent = Vec::new();
        queue.drain_sorted(|e| sent.push(e));
        assert_eq!(sent, ["first", "a", "b", "c"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn offs_keep_their_reserve() {
        let mut queue = OutQueue::with_capacity(2, 2);
        assert!(queue.push(0, 1));
        assert!(queue.push(0, 2));
        assert!(!queue.push(0, 3));
        assert!(queue.push_off(0, 4));
        assert!(queue.push_off(0, 5));
        assert!(!queue.push_off(0, 6));
        assert_eq!(queue.len(), 4);
    }
}
