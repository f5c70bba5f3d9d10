//! Taking turns at staging messages (see [`PREPARING`]).

/// Requests staging messages at once. Every stage is a new file in `tmp/`, and creating
/// files in one directory serialises on its lock in the kernel: twenty batches staging
/// together spent a third of the process's CPU spinning on that lock (perf). So staging
/// takes turns, as many at once as there are CPUs, and the commits (the waits on the
/// disk) overlap freely. (The SMTP listener gets the same bound from committing on the
/// runtime's worker threads.)
pub static PREPARING: Turns = Turns::new();

/// A counting semaphore for blocking threads: at most as many holders as CPUs.
pub struct Turns {
    held: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

/// A turn held; dropping it lets the next one in.
pub struct Turn<'a>(&'a Turns);

impl Turns {
    const fn new() -> Turns {
        Turns {
            held: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Wait for a turn; it ends when the returned guard is dropped.
    pub fn enter(&self) -> Turn<'_> {
        let max = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while *held >= max {
            held = self.freed.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        *held += 1;
        Turn(self)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.held.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.freed.notify_one();
    }
}
