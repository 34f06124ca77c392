//! The terminal that a prompt and the progress bars share. A prompt (a
//! password or passphrase asked with `--allow-interactive`, `ssh::auth`)
//! says when it opens and closes; whoever draws on the terminal (the
//! progress bars, `ui`) registers a hook that hides its drawing while a
//! prompt is open, so the prompt and what is typed are not drawn over.
//! Neither side knows the other: both use this room.

use std::sync::Mutex;

type Hook = Box<dyn Fn(bool) + Send + Sync>;

/// The drawing's hook: called with `true` when a prompt opens, `false`
/// when it closes.
static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

/// Makes `hook` the one told about prompts (replacing any earlier one).
pub fn on_prompt(hook: impl Fn(bool) + Send + Sync + 'static) {
    *HOOK.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(hook));
}

/// Forgets the hook (the drawing is gone).
pub fn clear_hook() {
    *HOOK.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// Tells the drawing that a prompt opens (`true`) or closes (`false`).
pub fn prompting(open: bool) {
    if let Some(hook) = HOOK.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        hook(open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_hook_hears_a_prompt_open_and_close() {
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        on_prompt(move |open| {
            s.fetch_add(if open { 1 } else { 10 }, Ordering::SeqCst);
        });
        prompting(true);
        prompting(false);
        assert_eq!(seen.load(Ordering::SeqCst), 11);
        clear_hook();
        prompting(true);
        assert_eq!(seen.load(Ordering::SeqCst), 11);
    }
}
