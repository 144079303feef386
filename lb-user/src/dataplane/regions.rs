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
#[derive(Debug)]
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
}
