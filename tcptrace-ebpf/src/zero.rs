//! Zeroing and copying without `memset`/`memcpy`. LLVM merges runs of zero stores
//! (`Event::zeroed()`, a struct literal with zero fields, `Owner::default()`, a
//! `[0u8; N]`) and struct copies into `memset`/`memcpy` calls, and this target lowers
//! them to a loop handling one byte per iteration: the state program spent a tenth of
//! its time there. Volatile word stores are neither merged nor split.
use core::mem::{align_of, size_of, MaybeUninit};

/// Set every byte of `value` to zero, eight at a time.
#[inline(always)]
pub fn zero_words<T: Copy>(value: &mut T) {
    // SAFETY: a valid, exclusively borrowed `T`.
    unsafe { zero_at(value) }
}

/// A `T` with every byte zero, written eight bytes at a time. For the plain-data types
/// shared with userspace (all fields integers or arrays of them), valid all-zero.
#[inline(always)]
pub fn zeroed<T: Copy>() -> T {
    let mut value = MaybeUninit::<T>::uninit();
    // SAFETY: `zero_at` writes every byte; the types used here are valid all-zero.
    unsafe {
        zero_at(value.as_mut_ptr());
        value.assume_init()
    }
}

/// Copy `src` into `dst` eight bytes at a time.
#[inline(always)]
pub fn copy_words<T: Copy>(dst: &mut T, src: &T) {
    const { assert!(size_of::<T>() % 8 == 0 && align_of::<T>() >= 8) };
    let (to, from) = (
        (dst as *mut T).cast::<u64>(),
        (src as *const T).cast::<u64>(),
    );
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: `i` words into both, which are 8-aligned whole numbers of words.
        unsafe { to.add(i).write_volatile(from.add(i).read_volatile()) };
        i += 1;
    }
}

/// # Safety
/// `value` must be valid for writes of a `T`.
#[inline(always)]
unsafe fn zero_at<T: Copy>(value: *mut T) {
    const { assert!(size_of::<T>() % 8 == 0 && align_of::<T>() >= 8) };
    let words = value.cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: `i` words into `value`, which is 8-aligned and a whole number of
        // words long (checked above).
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
}
