//! A size-class cache in front of the system allocator, installed as the
//! global allocator of `wasm32` components by the `fast-alloc` feature.
//!
//! Why: every frame a transform allocates a few dozen small strings and
//! vectors (topics, payloads, field keys), the canonical ABI allocates more
//! to lower them, and the host frees them all again after the call (the
//! `post-return` step). In a component the allocator behind `std` is
//! dlmalloc, and measured on `json-telemetry` it was a fifth of the time of a
//! call. Since a transform allocates the same shapes frame after frame, a
//! free list per power-of-two size class turns nearly every allocation into a
//! pop and every free into a push.
//!
//! Blocks of 16 bytes to 2 KiB with an alignment of at most 16 are rounded up
//! to a power of two and, once freed, kept on that size's free list for
//! reuse; they are never handed back to the system allocator, so memory use
//! is bounded by the peak of each size class. Anything larger or more
//! aligned goes straight to the system allocator.
//!
//! The cache is not thread-safe: it is only installed on `wasm32` without
//! the `atomics` target feature, where there is exactly one thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Size classes: 16, 32, ..., 2048 bytes.
const CLASSES: usize = 8;
const MIN_BLOCK: usize = 16;
const MAX_BLOCK: usize = MIN_BLOCK << (CLASSES - 1);
const BLOCK_ALIGN: usize = 16;

/// The size class of `layout`, or `None` when it bypasses the cache.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(MIN_BLOCK);
    if size > MAX_BLOCK || layout.align() > BLOCK_ALIGN {
        return None;
    }
    // ceil(log2(size)) - log2(MIN_BLOCK): 16 → 0, 17..=32 → 1, ...
    Some((usize::BITS - (size - 1).leading_zeros()) as usize - MIN_BLOCK.trailing_zeros() as usize)
}

fn block_layout(class: usize) -> Layout {
    // SAFETY: `BLOCK_ALIGN` is a power of two and the size, at most
    // `MAX_BLOCK`, cannot overflow when rounded up to it.
    unsafe { Layout::from_size_align_unchecked(MIN_BLOCK << class, BLOCK_ALIGN) }
}

/// The allocator. See the module docs.
pub struct CachingAlloc {
    /// Head of each size class's free list; a free block stores the next
    /// free block's address in its first word.
    free: UnsafeCell<[*mut u8; CLASSES]>,
}

// SAFETY: installed only where there is a single thread (see `lib.rs`);
// natively it is used only from the unit tests below, one instance per test.
unsafe impl Sync for CachingAlloc {}

impl CachingAlloc {
    /// An allocator with empty free lists.
    pub const fn new() -> Self {
        CachingAlloc {
            free: UnsafeCell::new([ptr::null_mut(); CLASSES]),
        }
    }
}

impl Default for CachingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl GlobalAlloc for CachingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: single-threaded and not re-entered (`System` does not call
        // back into the global allocator), so this is the only reference.
        let free = unsafe { &mut *self.free.get() };
        let block = free[class];
        if block.is_null() {
            // SAFETY: `block_layout` has a non-zero size.
            unsafe { System.alloc(block_layout(class)) }
        } else {
            // SAFETY: a free block holds the next free block's address in
            // its first word, written by `dealloc`; blocks are 16-aligned.
            free[class] = unsafe { block.cast::<*mut u8>().read() };
            block
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            // SAFETY: a block of this layout came from `System`.
            return unsafe { System.dealloc(block, layout) };
        };
        // SAFETY: as in `alloc`.
        let free = unsafe { &mut *self.free.get() };
        // SAFETY: the block is at least 16 bytes, 16-aligned and ours again.
        unsafe { block.cast::<*mut u8>().write(free[class]) };
        free[class] = block;
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` rounded up to the
        // alignment does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let class = class_of(layout);
        if class.is_some() && class == class_of(new_layout) {
            // Same block size: it already fits.
            return block;
        }
        if class.is_none() && class_of(new_layout).is_none() {
            // SAFETY: both layouts belong to `System`.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        // SAFETY: `new_layout` is valid and non-zero (the caller's contract).
        let new_block = unsafe { self.alloc(new_layout) };
        if !new_block.is_null() {
            // SAFETY: both blocks are valid for the smaller size and distinct.
            unsafe {
                ptr::copy_nonoverlapping(block, new_block, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
        }
        new_block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("valid layout")
    }

    #[test]
    fn size_classes() {
        assert_eq!(class_of(layout(1, 1)), Some(0));
        assert_eq!(class_of(layout(16, 8)), Some(0));
        assert_eq!(class_of(layout(17, 1)), Some(1));
        assert_eq!(class_of(layout(32, 4)), Some(1));
        assert_eq!(class_of(layout(1000, 8)), Some(6));
        assert_eq!(class_of(layout(2048, 16)), Some(7));
        assert_eq!(class_of(layout(2049, 1)), None);
        assert_eq!(class_of(layout(8, 32)), None);
    }

    #[test]
    fn freed_blocks_are_reused_per_class() {
        let a = CachingAlloc::new();
        unsafe {
            let l = layout(24, 8);
            let p = a.alloc(l);
            assert!(!p.is_null());
            assert_eq!(p as usize % BLOCK_ALIGN, 0);
            p.write_bytes(0xab, 24);
            a.dealloc(p, l);
            // Same class (17..=32): the same block comes back, LIFO.
            let q = a.alloc(layout(30, 2));
            assert_eq!(p, q);
            // A different class does not get it.
            let r = a.alloc(layout(40, 8));
            assert_ne!(r, q);
            a.dealloc(q, layout(30, 2));
            a.dealloc(r, layout(40, 8));
        }
    }

    #[test]
    fn large_and_over_aligned_bypass_the_cache() {
        let a = CachingAlloc::new();
        unsafe {
            for l in [layout(4096, 8), layout(64, 64)] {
                let p = a.alloc(l);
                assert!(!p.is_null());
                assert_eq!(p as usize % l.align(), 0);
                a.dealloc(p, l);
            }
            assert!((*a.free.get()).iter().all(|p| p.is_null()));
        }
    }

    #[test]
    fn realloc_keeps_contents_across_classes() {
        let a = CachingAlloc::new();
        unsafe {
            let l = layout(10, 1);
            let p = a.alloc(l);
            for i in 0..10 {
                p.add(i).write(i as u8);
            }
            // Within the class: same block.
            let p2 = a.realloc(p, l, 16);
            assert_eq!(p, p2);
            // To a bigger class, then past the cache, then back.
            let p3 = a.realloc(p2, layout(16, 1), 100);
            let p4 = a.realloc(p3, layout(100, 1), 5000);
            let p5 = a.realloc(p4, layout(5000, 1), 12);
            for i in 0..10 {
                assert_eq!(p5.add(i).read(), i as u8);
            }
            a.dealloc(p5, layout(12, 1));
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_even_when_reused() {
        let a = CachingAlloc::new();
        unsafe {
            let l = layout(64, 8);
            let p = a.alloc(l);
            p.write_bytes(0xff, 64);
            a.dealloc(p, l);
            let q = a.alloc_zeroed(l);
            assert_eq!(p, q);
            assert!((0..64).all(|i| q.add(i).read() == 0));
            a.dealloc(q, l);
        }
    }
}
