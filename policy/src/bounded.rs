//! [`BoundedVec`]: a list with a capacity bound, stored on the heap.
//!
//! Why not `heapless::Vec` everywhere: a `heapless::Vec<DomainName, 64>`
//! reserves 64 × 254 bytes inline whether it holds one name or none. The
//! per-domain lists (exclusions, trusted names, routes, outbound servers)
//! would then cost about 22 KB for every domain that has details, over 2 GB
//! for a 100,000-domain policy, when the same policy needs a few tens of
//! megabytes. The small fixed-size fields (domain names, the retry schedule,
//! a trust anchor's bytes) stay `heapless`; the lists whose elements are
//! large use this type, which keeps the same promise: it can never hold
//! more than `N` elements — `push` refuses, and deserialising more than
//! `N` elements fails, so a blob cannot describe more than the relay is
//! built to hold. On the wire it is a plain sequence, byte-identical to
//! `heapless::Vec`.

use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `Vec<T>` that never holds more than `N` elements.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BoundedVec<T, const N: usize>(Vec<T>);

impl<T, const N: usize> BoundedVec<T, N> {
    /// The bound.
    pub const CAPACITY: usize = N;

    pub const fn new() -> Self {
        BoundedVec(Vec::new())
    }

    /// Appends `item`, or gives it back when the list is full.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        if self.0.len() >= N {
            return Err(item);
        }
        self.0.push(item);
        Ok(())
    }

    /// A list of `items`, or `None` when there are more than `N`.
    pub fn from_vec(items: Vec<T>) -> Option<Self> {
        (items.len() <= N).then_some(BoundedVec(items))
    }

    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<T> {
        self.0
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Sorts in place (the order of the list is then canonical).
    pub fn sort(&mut self)
    where
        T: Ord,
    {
        self.0.sort();
    }

    /// Sorts and removes duplicates.
    pub fn sort_dedup(&mut self)
    where
        T: Ord,
    {
        self.0.sort();
        self.0.dedup();
    }
}

impl<T, const N: usize> Default for BoundedVec<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Deref for BoundedVec<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

/// Elements may be changed and reordered in place; the length may not.
impl<T, const N: usize> DerefMut for BoundedVec<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

impl<'a, T, const N: usize> IntoIterator for &'a BoundedVec<T, N> {
    type Item = &'a T;
    type IntoIter = core::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T, const N: usize> IntoIterator for BoundedVec<T, N> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<T: fmt::Debug, const N: usize> fmt::Debug for BoundedVec<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Serialize, const N: usize> Serialize for BoundedVec<T, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for BoundedVec<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
            type Value = BoundedVec<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a sequence of at most {N} elements")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                if seq.size_hint().is_some_and(|n| n > N) {
                    return Err(A::Error::invalid_length(N + 1, &self));
                }
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N));
                while let Some(item) = seq.next_element()? {
                    if out.len() == N {
                        return Err(A::Error::invalid_length(N + 1, &self));
                    }
                    out.push(item);
                }
                Ok(BoundedVec(out))
            }
        }
        d.deserialize_seq(V::<T, N>(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_refuses_past_the_bound() {
        let mut v = BoundedVec::<u8, 2>::new();
        assert_eq!(v.push(1), Ok(()));
        assert_eq!(v.push(2), Ok(()));
        assert_eq!(v.push(3), Err(3));
        assert_eq!(v.as_slice(), &[1, 2]);
    }

    #[test]
    fn wire_form_matches_heapless_and_decode_enforces_the_bound() {
        let mut h = heapless::Vec::<u16, 4>::new();
        let mut b = BoundedVec::<u16, 4>::new();
        for x in [7u16, 300, 9] {
            let _ = h.push(x);
            let _ = b.push(x);
        }
        let hb = postcard::to_allocvec(&h).unwrap();
        assert_eq!(postcard::to_allocvec(&b).unwrap(), hb);
        let back: BoundedVec<u16, 4> = postcard::from_bytes(&hb).unwrap();
        assert_eq!(back, b);
        let too_many = postcard::to_allocvec(&vec![1u16, 2, 3, 4, 5]).unwrap();
        assert!(postcard::from_bytes::<BoundedVec<u16, 4>>(&too_many).is_err());
    }
}
