//! Work on every VM (or image) at once: one scoped thread per item, all joined before
//! lab goes on. One item's failure, or a panic in its thread, does not stop the others;
//! each result says which item it belongs to.
//!
//! Its own module rather than part of `apply`, because guest provisioning and `lab trim`
//! fan out too, and taking it from `apply` tied them to the executor of plans.

use std::any::Any;

use anyhow::{Result, anyhow, bail};

/// Run `work` on every item, each in its own thread, and wait for all of them. `name`
/// says which item a result is about (a VM's name): a panic becomes the error
/// "NAME: lab's work on it panicked: MESSAGE" instead of taking lab down. The results
/// come back in item order.
///
/// Items are handed out from this thread, in order, as the threads are spawned: what an
/// item is made of (a progress line, say) is made in order too.
pub fn each<T, R>(
    items: impl IntoIterator<Item = T>,
    name: impl Fn(&T) -> String,
    work: impl Fn(T) -> Result<R> + Sync,
) -> Vec<Result<R>>
where
    T: Send,
    R: Send,
{
    named(items, name, work)
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

/// [`each`], then every item's value, or one error with a line per item that failed, each
/// line starting with the item's name (put there when the item's error does not already
/// start with it).
pub fn all<T, R>(
    items: impl IntoIterator<Item = T>,
    name: impl Fn(&T) -> String,
    work: impl Fn(T) -> Result<R> + Sync,
) -> Result<Vec<R>>
where
    T: Send,
    R: Send,
{
    let results = named(items, name, work)
        .into_iter()
        .map(|(name, r)| {
            r.map_err(|e| {
                if e.to_string().starts_with(&format!("{name}: ")) {
                    e
                } else {
                    e.context(name)
                }
            })
        })
        .collect();
    all_or_errors(results)
}

/// [`each`], each result with its item's name.
fn named<T, R>(
    items: impl IntoIterator<Item = T>,
    name: impl Fn(&T) -> String,
    work: impl Fn(T) -> Result<R> + Sync,
) -> Vec<(String, Result<R>)>
where
    T: Send,
    R: Send,
{
    let work = &work;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| (name(&item), s.spawn(move || work(item))))
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| {
                let r = h.join().unwrap_or_else(|panic| {
                    Err(anyhow!(
                        "{name}: lab's work on it panicked: {}",
                        panic_message(&*panic)
                    ))
                });
                (name, r)
            })
            .collect()
    })
}

/// Every value, or one error listing every failure, one per line (in full: each with its
/// causes).
pub fn all_or_errors<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(v) => values.push(v),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(values)
}

/// What a panic said, when it said it with a string (as `panic!` and `expect` do).
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn every_item_runs_at_once_and_results_keep_item_order() {
        let started = Instant::now();
        let out = all(
            [3u64, 1, 2],
            |n| format!("vm{n}"),
            |n| {
                std::thread::sleep(Duration::from_millis(300 * n));
                Ok(n * 10)
            },
        )
        .unwrap();
        assert_eq!(out, [30, 10, 20]);
        // One after the other would take 1.8 s.
        assert!(started.elapsed() < Duration::from_millis(1500));
    }

    #[test]
    fn an_error_is_reported_with_its_item_and_the_others_still_run() {
        let ran = std::sync::Mutex::new(Vec::new());
        let err = all(
            ["web1", "web2", "db1"],
            |n| n.to_string(),
            |n| {
                ran.lock().unwrap().push(n);
                match n {
                    "web2" => bail!("starting domain lab-p-web2: no memory"),
                    "db1" => bail!("db1: provision step x failed with exit status 3"),
                    _ => Ok(()),
                }
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "web2: starting domain lab-p-web2: no memory\n\
             db1: provision step x failed with exit status 3"
        );
        assert_eq!(ran.lock().unwrap().len(), 3);
    }

    #[test]
    fn a_panic_is_an_error_naming_its_item_not_a_crash() {
        let results = each(
            ["ok", "boom"],
            |n| n.to_string(),
            |n| {
                if n == "boom" {
                    panic!("index out of range");
                }
                Ok(n.len())
            },
        );
        assert_eq!(results[0].as_ref().unwrap(), &2);
        let err = results[1].as_ref().unwrap_err().to_string();
        assert_eq!(err, "boom: lab's work on it panicked: index out of range");
        let err = all(
            [1],
            |_| "vm1".to_string(),
            |_| -> Result<()> { panic!("{}", String::from("formatted")) },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "vm1: lab's work on it panicked: formatted");
    }

    #[test]
    fn nothing_to_do_is_nothing_done() {
        let out: Vec<()> = all(Vec::<u8>::new(), |_| String::new(), |_| Ok(())).unwrap();
        assert!(out.is_empty());
    }
}
