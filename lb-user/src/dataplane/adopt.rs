//! Starting on a pinned data plane: afresh (nothing pinned), by adoption (a compatible data
//! plane is pinned: reuse its maps, swap the new program in on its link), or by a forced reload
//! (an incompatible one: detach it and start afresh).
//!
//! After an adoption the maps are left as they are — the data plane keeps forwarding with the
//! last tables — and the controller reads them ([`read_pinned`], through the [`Maps`] trait, so
//! in-memory maps can play pinned ones in tests) and rebuilds its allocation from them
//! (`super::inherit`, pure). The first sync then takes over the services and real servers the
//! configuration still has, under their old ids, so the connection table, persistence
//! templates and counters keep pointing at them.

use std::{collections::HashMap, net::IpAddr, path::PathBuf};

use lb_common::names;
use tracing::{info, warn};

use super::{
    inherit::{self, PinnedMaps},
    layout, map_err,
    maps::{Maps, MapsError},
    pin::{self, LinkState, PinDir},
    AttachMode, Dataplane, DataplaneError, Sizes,
};
use crate::kernel_log::KernelLog;

/// How xvsd came by its data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Nothing usable was pinned: loaded, attached and pinned anew.
    Fresh,
    /// A compatible pinned data plane was adopted and runs this build's program now.
    Adopted {
        /// Services it held.
        services: usize,
        /// Real-server slots it held.
        backends: usize,
        /// Id of the program that ran on the link before.
        previous_program: u32,
    },
    /// An incompatible pinned data plane was detached and replaced (`--force-reload`).
    Reloaded {
        /// Why it was incompatible.
        reasons: Vec<String>,
    },
}

impl Start {
    /// `fresh`, `adopted` or `reloaded`.
    pub fn name(&self) -> &'static str {
        match self {
            Start::Fresh => "fresh",
            Start::Adopted { .. } => "adopted",
            Start::Reloaded { .. } => "reloaded",
        }
    }
}

/// Where and how to run a pinned data plane.
#[derive(Clone, Debug)]
pub struct PinnedStart {
    /// Interface name.
    pub iface: String,
    /// Its index.
    pub ifindex: u32,
    /// Further interfaces the same program and maps run on (`--iface` repeated: two arms), by
    /// name and index, each through a link of its own pinned as `link-IFACE`. A pinned further
    /// link whose interface is not here any more is detached.
    pub more_ifaces: Vec<(String, u32)>,
    /// Attach mode of a fresh attachment (an adopted link keeps its own).
    pub mode: AttachMode,
    /// Map sizes.
    pub sizes: Sizes,
    /// Pin directory.
    pub dir: PathBuf,
    /// Replace an incompatible pinned data plane instead of refusing to start.
    pub force_reload: bool,
    /// What the programs log (`--kernel-log`).
    pub kernel_log: KernelLog,
}

/// Reads what a previous xvsd left in the maps: every service, backend slot and filter word,
/// and the tables the services point at (those inside SCHED_SLOTS' `sched_slots` entries; the
/// others are refused by [`inherit::inherit`]).
pub fn read_pinned(maps: &dyn Maps, sched_slots: u32) -> Result<PinnedMaps, MapsError> {
    let services = maps.services()?;
    let mut tables = HashMap::new();
    for (_, v) in &services {
        let (off, len) = (v.table_off, v.table_len);
        if len > 0
            && off as u64 + len as u64 <= sched_slots as u64
            && !tables.contains_key(&(off, len))
        {
            tables.insert((off, len), maps.slots(off, len)?);
        }
    }
    Ok(PinnedMaps {
        services,
        backends: maps.backends()?,
        filter: maps.filter_words()?,
        tables,
        laddrs: maps.laddrs()?,
    })
}

impl Dataplane {
    /// Runs the director pinned in `opts.dir`: adopts a compatible pinned data plane, refuses
    /// an incompatible one (unless `force_reload`), or loads, attaches and pins a fresh one.
    pub fn start_pinned(opts: &PinnedStart) -> Result<(Dataplane, Start), DataplaneError> {
        let dir = PinDir::create(&opts.dir)?;
        let expected = layout::expected(opts.sizes)?;
        match dir.link_state()? {
            LinkState::Attached { ifindex, .. } if ifindex != opts.ifindex => {
                Err(pin::PinError::OtherInterface {
                    dir: opts.dir.clone(),
                    iface: opts.iface.clone(),
                    expected: opts.ifindex,
                    found: ifindex,
                }
                .into())
            }
            LinkState::Attached { prog_id, .. } => {
                let reasons = layout::pinned_mismatches(&dir, &expected);
                if reasons.is_empty() {
                    let mut dp = Self::load_inner(opts.sizes, Some(&dir), false, opts.kernel_log)?;
                    dp.replace_on_link(&dir)?;
                    dp.sync_more_links(&dir, opts)?;
                    let (services, backends) = dp.inherit()?;
                    dp.pins = Some(dir);
                    return Ok((
                        dp,
                        Start::Adopted {
                            services,
                            backends,
                            previous_program: prog_id,
                        },
                    ));
                }
                if !opts.force_reload {
                    return Err(DataplaneError::Incompatible {
                        dir: opts.dir.clone(),
                        reasons,
                    });
                }
                warn!(
                    dir = %opts.dir.display(),
                    why = %reasons.join("; "),
                    "--force-reload: detaching the incompatible pinned data plane; its connection \
                     table, persistence templates, counters and tables are lost, and virtual \
                     services pass to the kernel until the configuration is restored"
                );
                dir.clear()?;
                let dp = Self::start_fresh(dir, opts, &expected)?;
                Ok((dp, Start::Reloaded { reasons }))
            }
            LinkState::Detached => {
                info!(
                    dir = %opts.dir.display(),
                    "the pinned XDP link is attached to nothing any more (its interface went away): starting afresh"
                );
                dir.clear()?;
                Ok((Self::start_fresh(dir, opts, &expected)?, Start::Fresh))
            }
            LinkState::Absent => {
                let left = dir.entries()?;
                if !left.is_empty() {
                    // Maps pinned by a start that died before it pinned its link: nothing
                    // ever forwarded with them.
                    info!(dir = %opts.dir.display(), pins = ?left, "removing the pins of an interrupted start");
                    dir.clear()?;
                }
                Ok((Self::start_fresh(dir, opts, &expected)?, Start::Fresh))
            }
        }
    }

    /// Makes the further interfaces' links match `opts.more_ifaces`: this program is swapped
    /// in on the pinned links still wanted, the missing ones are attached and pinned, and the
    /// pinned ones no longer wanted are detached and unpinned (an operator who drops an
    /// `--iface` means the director to leave that interface, as `--cleanup` would).
    fn sync_more_links(&mut self, dir: &PinDir, opts: &PinnedStart) -> Result<(), DataplaneError> {
        let wanted: Vec<String> = opts.more_ifaces.iter().map(|(n, _)| n.clone()).collect();
        let plan = pin::plan_links(&dir.more_links()?, &wanted);
        for iface in &plan.detach {
            let name = pin::link_pin_name(false, iface);
            let detached = matches!(dir.link_state_of(&name)?, LinkState::Attached { .. })
                && dir.detach_link_of(&name)?;
            let path = dir.link_named(&name);
            std::fs::remove_file(&path).map_err(|source| pin::PinError::Io {
                what: "removing",
                path: path.clone(),
                source,
            })?;
            info!(
                iface = %iface, detached,
                "detached the director from {iface}: it is not given with --iface any more"
            );
        }
        for (iface, ifindex) in &opts.more_ifaces {
            let name = pin::link_pin_name(false, iface);
            let path = dir.link_named(&name);
            match dir.link_state_of(&name)? {
                LinkState::Attached { ifindex: found, .. } if found != *ifindex => {
                    return Err(pin::PinError::OtherInterface {
                        dir: opts.dir.clone(),
                        iface: iface.clone(),
                        expected: *ifindex,
                        found,
                    }
                    .into());
                }
                LinkState::Attached { prog_id, .. } => {
                    self.swap_on_link(&path)?;
                    info!(iface = %iface, previous_program = prog_id, "adopted the pinned link on {iface}");
                }
                LinkState::Detached => {
                    std::fs::remove_file(&path).map_err(|source| pin::PinError::Io {
                        what: "removing",
                        path: path.clone(),
                        source,
                    })?;
                    info!(iface = %iface, "the pinned link on {iface} was attached to nothing any more: attaching anew");
                    self.attach_link_pinned(iface, opts.mode, &path)?;
                }
                LinkState::Absent => {
                    self.attach_link_pinned(iface, opts.mode, &path)?;
                    info!(iface = %iface, mode = ?opts.mode, "attached the director to {iface}");
                }
            }
        }
        Ok(())
    }

    /// Loads with new maps pinned in `dir`, records their layout, attaches and pins the links.
    /// On failure nothing stays pinned.
    fn start_fresh(
        dir: PinDir,
        opts: &PinnedStart,
        expected: &[lb_common::MapLayout],
    ) -> Result<Dataplane, DataplaneError> {
        let result = (|| {
            let mut dp = Self::load_inner(opts.sizes, Some(&dir), true, opts.kernel_log)?;
            dp.meta
                .set(0, layout::record(expected), 0)
                .map_err(map_err(names::MAP_META))?;
            dp.attach_pinned(&opts.iface, opts.mode, &dir)?;
            dp.sync_more_links(&dir, opts)?;
            Ok(dp)
        })();
        match result {
            Ok(mut dp) => {
                dp.pins = Some(dir);
                Ok(dp)
            }
            Err(e) => {
                if let Err(again) = dir.clear() {
                    warn!(error = %again, "removing the pins of the failed start");
                }
                Err(e)
            }
        }
    }

    /// Rebuilds the controller's allocation from the maps a previous xvsd filled. Returns the
    /// number of services and backend slots found.
    fn inherit(&mut self) -> Result<(usize, usize), DataplaneError> {
        let pinned = read_pinned(&self.maps, self.sizes.sched_slots)?;
        let adopted = inherit::inherit(&pinned, self.sizes.sched_slots)?;
        self.placement = adopted.placement;
        Ok((adopted.services, adopted.backends))
    }

    /// Whether the data plane was adopted and no configuration has been synced since: its
    /// maps still hold what the previous xvsd wrote.
    pub fn adoption_pending(&self) -> bool {
        self.placement.adoption_pending()
    }

    /// Next-hop MACs of the adopted direct-routing real servers, so the first sync can publish
    /// them at once instead of waiting for the neighbour table.
    pub fn inherited_macs(&self) -> HashMap<IpAddr, [u8; 6]> {
        self.placement.inherited_macs()
    }
}
