//! Files to delete when the process is interrupted (SIGINT, SIGTERM, SIGHUP) before its own
//! clean-up runs. A build's working copy and its half-written output are hidden dot-files in
//! the user's output directory, gigabytes for a real image: Ctrl-C must not leave them behind.
//!
//! A signal handler may only do async-signal-safe work, so the paths live as C strings in a
//! fixed table of atomic pointers and the handler calls nothing but `unlink`, `signal` and
//! `raise`. Without [`install`] (library use), guards cost nothing and do nothing.
//! The `unsafe` stays: installing a signal handler and working on raw C strings inside one
//! has no safe API in std or rustix.

use std::ffi::{CString, c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

const SLOTS: usize = 16;
static PATHS: [AtomicPtr<c_char>; SLOTS] = [const { AtomicPtr::new(ptr::null_mut()) }; SLOTS];
const SIGNALS: [c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Deletes its path if the process is interrupted while the guard lives.
pub struct Guard {
    slot: Option<usize>,
}

impl Guard {
    pub fn new(path: &Path) -> Guard {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
            return Guard { slot: None };
        };
        let raw = c.into_raw();
        for (i, slot) in PATHS.iter().enumerate() {
            if slot
                .compare_exchange(ptr::null_mut(), raw, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return Guard { slot: Some(i) };
            }
        }
        // More files in flight than slots: this one is not protected.
        // SAFETY: `raw` came from `into_raw` above and was published nowhere.
        drop(unsafe { CString::from_raw(raw) });
        Guard { slot: None }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            // Deliberately leaked: a handler on another thread may have loaded the pointer
            // just before the swap. A few bytes per guarded file.
            PATHS[i].swap(ptr::null_mut(), Ordering::SeqCst);
        }
    }
}

/// A message for stderr if the process is interrupted while the notice lives (`imagegen flash`:
/// the card is incomplete). One at a time; a newer notice replaces an older one.
pub struct Notice {
    _private: (),
}

static NOTICE: AtomicPtr<c_char> = AtomicPtr::new(ptr::null_mut());
static NOTICE_LEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Notice {
    pub fn new(message: &str) -> Notice {
        let text = format!("\n{message}\n");
        let len = text.len();
        if let Ok(c) = CString::new(text) {
            // Deliberately leaked, as the guards' paths: a handler may be reading it.
            NOTICE_LEN.store(0, Ordering::SeqCst);
            NOTICE.store(c.into_raw(), Ordering::SeqCst);
            NOTICE_LEN.store(len, Ordering::SeqCst);
        }
        Notice { _private: () }
    }
}

impl Drop for Notice {
    fn drop(&mut self) {
        NOTICE_LEN.store(0, Ordering::SeqCst);
        NOTICE.store(ptr::null_mut(), Ordering::SeqCst);
    }
}

extern "C" fn on_signal(signal: c_int) {
    let len = NOTICE_LEN.load(Ordering::SeqCst);
    let message = NOTICE.load(Ordering::SeqCst);
    if len > 0 && !message.is_null() {
        // SAFETY: `write` is async-signal-safe; the string is never freed and `len` long.
        unsafe { libc::write(2, message.cast(), len) };
    }
    for slot in &PATHS {
        let path = slot.load(Ordering::SeqCst);
        if !path.is_null() {
            // SAFETY: a NUL-terminated string that is never freed.
            unsafe { libc::unlink(path) };
        }
    }
    // Die of the signal, as without the handler, so the parent sees why.
    // SAFETY: both are async-signal-safe.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// Installs the handler for the process (the CLI does, once, at start). A signal the process
/// was started with ignored (`nohup`, background jobs of a script) stays ignored.
pub fn install() {
    for signal in SIGNALS {
        let handler = on_signal as extern "C" fn(c_int) as libc::sighandler_t;
        // SAFETY: the handler only does async-signal-safe work.
        let previous = unsafe { libc::signal(signal, handler) };
        if previous == libc::SIG_IGN {
            // SAFETY: restoring the disposition we found.
            unsafe { libc::signal(signal, libc::SIG_IGN) };
        }
    }
}
