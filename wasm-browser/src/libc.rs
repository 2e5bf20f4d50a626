//! The C allocation functions the pure-Rust `openjp2` (JPEG 2000) still calls by name.
//!
//! On wasm32-unknown-unknown nothing provides `malloc` and friends: without these the
//! wasm-bindgen glue imports them from a module `env` that does not exist. They sit on Rust's
//! global allocator with a 16-byte header holding the size, so `free` and `realloc` know the
//! layout. `free(NULL)` is a no-op, as C requires.
//!
//! openjp2 also calls Rust's allocator directly with zero-sized layouts and frees null
//! pointers (legal in C, undefined for `GlobalAlloc`; on wasm the default allocator traps), so
//! the global allocator here treats size 0 as 1 and ignores null.

use std::alloc::{GlobalAlloc, Layout, System, alloc, alloc_zeroed, dealloc};
use std::ffi::{c_char, c_void};

/// `System`, made tolerant of what translated C does: zero sizes and null frees.
struct Tolerant;

fn nonzero(layout: Layout) -> Layout {
    Layout::from_size_align(layout.size().max(1), layout.align()).unwrap_or(layout)
}

// SAFETY: forwards to `System` with the same (adjusted) layout on every path, so each block is
// freed with the layout it was allocated with.
unsafe impl GlobalAlloc for Tolerant {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the adjusted layout is non-zero.
        unsafe { System.alloc(nonzero(layout)) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(nonzero(layout)) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !ptr.is_null() {
            // SAFETY: `ptr` came from `alloc` with this layout, adjusted the same way.
            unsafe { System.dealloc(ptr, nonzero(layout)) }
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ptr.is_null() {
            // SAFETY: a fresh allocation of the new size.
            return unsafe {
                self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()))
            };
        }
        // SAFETY: `ptr` came from this allocator with `layout` (adjusted the same way).
        unsafe { System.realloc(ptr, nonzero(layout), new_size.max(1)) }
    }
}

#[global_allocator]
static ALLOCATOR: Tolerant = Tolerant;

const HEADER: usize = 16;

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, HEADER).ok()
}

/// Allocates `size` bytes behind a header; `zeroed` as calloc.
unsafe fn allocate(size: usize, zeroed: bool) -> *mut c_void {
    let Some(layout) = layout(size) else { return std::ptr::null_mut() };
    // SAFETY: the layout is non-zero in size (the header) and its alignment a power of two.
    let base = unsafe { if zeroed { alloc_zeroed(layout) } else { alloc(layout) } };
    if base.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: `base` is valid for HEADER + size bytes and aligned to 16.
    unsafe {
        base.cast::<usize>().write(size);
        base.add(HEADER).cast()
    }
}

/// The size recorded for a pointer returned by [`allocate`].
unsafe fn size_of(ptr: *mut c_void) -> usize {
    // SAFETY: the caller passes a pointer from `allocate`, whose header precedes it.
    unsafe { ptr.cast::<u8>().sub(HEADER).cast::<usize>().read() }
}

/// C `malloc`.
///
/// # Safety
/// As C's: the result is freed only by [`free`] or resized by [`realloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { allocate(size, false) }
}

/// C `calloc`.
///
/// # Safety
/// As [`malloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: forwarded contract.
        Some(total) => unsafe { allocate(total, true) },
        None => std::ptr::null_mut(),
    }
}

/// C `free`; null is ignored.
///
/// # Safety
/// `ptr` is null or came from [`malloc`], [`calloc`] or [`realloc`] and was not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: the pointer came from `allocate` (caller's contract), so the header is there and
    // the layout is the one it was allocated with.
    unsafe {
        let size = size_of(ptr);
        if let Some(layout) = layout(size) {
            dealloc(ptr.cast::<u8>().sub(HEADER), layout);
        }
    }
}

/// C `realloc`: a new block with the old contents, the old one freed.
///
/// # Safety
/// As [`free`] for `ptr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: forwarded contract.
        return unsafe { allocate(size, false) };
    }
    // SAFETY: `ptr` came from `allocate`; the copy stays within both blocks.
    unsafe {
        let new = allocate(size, false);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(
                ptr.cast::<u8>(),
                new.cast::<u8>(),
                size.min(size_of(ptr)),
            );
            free(ptr);
        }
        new
    }
}

/// C `strcpy`.
///
/// # Safety
/// `src` is NUL-terminated and `dst` has room for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strcpy(dst: *mut c_char, src: *const c_char) -> *mut c_char {
    // SAFETY: the caller's contract.
    unsafe {
        let mut i = 0;
        loop {
            let c = *src.add(i);
            *dst.add(i) = c;
            if c == 0 {
                return dst;
            }
            i += 1;
        }
    }
}
