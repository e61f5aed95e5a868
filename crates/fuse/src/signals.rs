//! Termination signals as an event a thread waits for: blocked in every thread (the
//! mask is inherited by the session's threads, spawned later), taken by `sigwait`; and the
//! unmount a signal asks for.

/// The blocked set of termination signals.
pub(crate) struct Termination(libc::sigset_t);

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and the threads it starts.
pub(crate) fn block_termination() -> std::io::Result<Termination> {
    // SAFETY: sigemptyset and sigaddset fill a sigset_t we own; pthread_sigmask reads it
    // and changes only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(Termination(set))
    }
}

impl Termination {
    /// Waits for one of the signals; returns its number.
    pub(crate) fn wait(&self) -> i32 {
        loop {
            let mut signal = 0;
            // SAFETY: the set is initialised and `signal` is a valid place to write.
            let rc = unsafe { libc::sigwait(&self.0, &mut signal) };
            if rc == 0 {
                return signal;
            }
        }
    }
}

/// Unmounts `path`: `umount2` as root, else `fusermount3 -u`, as fuser does.
pub(crate) fn unmount_path(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: c_path is a valid NUL-terminated string for the call's duration.
    if unsafe { libc::umount2(c_path.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EPERM) {
        return Err(error);
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(path)
        .status()?;
    match status.success() {
        true => Ok(()),
        false => Err(std::io::Error::other(format!(
            "fusermount3 -u {} exited with {status}",
            path.display()
        ))),
    }
}
