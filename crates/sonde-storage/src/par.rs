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
    let f = &f;
    items.par_chunks_mut(size).map(f).collect()
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
}
