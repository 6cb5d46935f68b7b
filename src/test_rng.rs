//! A tiny deterministic generator for the randomized unit tests (decoder mutations, SSE
//! chunkings, garbage values), so they need no extra crate and every run sees the same cases.

/// xorshift64 (Marsaglia).
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..bound`; `bound` must not be 0.
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    /// One of `items`, which must not be empty.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A byte, biased towards values that break lengths, counts and tuple kinds.
    pub(crate) fn byte(&mut self) -> u8 {
        const EDGES: [u8; 6] = [0x00, 0xff, 0x7f, 0x80, b'n', b't'];
        match self.below(4) {
            0 => EDGES[self.below(EDGES.len())],
            _ => self.next() as u8,
        }
    }
}
