//! First-fit allocator for per-service regions of the shared scheduler-slot array.

/// A run of slots: `[off, off + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First slot.
    pub off: u32,
    /// Number of slots.
    pub len: u32,
}

/// Free space of the slot array, kept sorted and coalesced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regions {
    free: Vec<Region>,
}

impl Regions {
    /// All of `[0, capacity)` free.
    pub fn new(capacity: u32) -> Self {
        Self {
            free: vec![Region {
                off: 0,
                len: capacity,
            }],
        }
    }

    /// Takes `len` slots, or None when no free run is long enough.
    pub fn alloc(&mut self, len: u32) -> Option<Region> {
        let i = self.free.iter().position(|r| r.len >= len)?;
        let r = self.free[i];
        if r.len == len {
            self.free.remove(i);
        } else {
            self.free[i] = Region {
                off: r.off + len,
                len: r.len - len,
            };
        }
        Some(Region { off: r.off, len })
    }

    /// Gives a region back.
    pub fn free(&mut self, region: Region) {
        if region.len == 0 {
            return;
        }
        let i = self.free.partition_point(|r| r.off < region.off);
        self.free.insert(i, region);
        // Merge with the following and the preceding neighbours.
        if i + 1 < self.free.len() && self.free[i].off + self.free[i].len == self.free[i + 1].off {
            self.free[i].len += self.free[i + 1].len;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].off + self.free[i - 1].len == self.free[i].off {
            self.free[i - 1].len += self.free[i].len;
            self.free.remove(i);
        }
    }

    /// Takes a specific region out of the free space (an adopted table that is still published).
    /// Fails when any of its slots is not free or lies outside the array.
    pub fn reserve(&mut self, region: Region) -> Result<(), Region> {
        if region.len == 0 {
            return Ok(());
        }
        let end = region.off as u64 + region.len as u64;
        let i = self
            .free
            .iter()
            .position(|r| r.off <= region.off && end <= r.off as u64 + r.len as u64)
            .ok_or(region)?;
        let r = self.free.remove(i);
        let tail = Region {
            off: end as u32,
            len: (r.off as u64 + r.len as u64 - end) as u32,
        };
        if tail.len > 0 {
            self.free.insert(i, tail);
        }
        let head = Region {
            off: r.off,
            len: region.off - r.off,
        };
        if head.len > 0 {
            self.free.insert(i, head);
        }
        Ok(())
    }

    /// Total free slots.
    pub fn free_slots(&self) -> u64 {
        self.free.iter().map(|r| r.len as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_coalesce() {
        let mut r = Regions::new(100);
        let a = r.alloc(10).unwrap();
        let b = r.alloc(20).unwrap();
        let c = r.alloc(30).unwrap();
        assert_eq!((a.off, b.off, c.off), (0, 10, 30));
        assert!(r.alloc(41).is_none());
        r.free(b);
        r.free(a);
        assert_eq!(r.alloc(30).unwrap().off, 0);
        r.free(Region { off: 0, len: 30 });
        r.free(c);
        assert_eq!(r.free_slots(), 100);
        assert_eq!(r.alloc(100).unwrap(), Region { off: 0, len: 100 });
    }

    #[test]
    fn reserve_carves_exact_regions_and_refuses_overlaps() {
        let mut r = Regions::new(100);
        r.reserve(Region { off: 10, len: 20 }).unwrap();
        r.reserve(Region { off: 0, len: 5 }).unwrap();
        r.reserve(Region { off: 90, len: 10 }).unwrap();
        assert_eq!(r.free_slots(), 65);
        // Overlapping a reserved region, or past the end: refused, nothing changes.
        assert!(r.reserve(Region { off: 25, len: 10 }).is_err());
        assert!(r.reserve(Region { off: 95, len: 10 }).is_err());
        assert_eq!(r.free_slots(), 65);
        // First fit sees the holes left around the reserved regions.
        assert_eq!(r.alloc(5).unwrap(), Region { off: 5, len: 5 });
        assert_eq!(r.alloc(60).unwrap(), Region { off: 30, len: 60 });
        assert!(r.alloc(1).is_none());
        r.free(Region { off: 10, len: 20 });
        assert_eq!(r.alloc(20).unwrap(), Region { off: 10, len: 20 });
    }
}
