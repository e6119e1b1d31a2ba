//! The written pages an ACK reports on `Userfault`
//! (`try_changed_with_pages`): each written page, as long as a reply can
//! list them (2048 separate runs, the agent's `MAX_RANGES`), and the whole
//! region past that, never a reply the consumer cannot read. Found by
//! cargo mutants: the agent's "too many to list" test (`reprotect_all ||
//! runs.len() > MAX_RANGES` in `State::ack`) could be weakened three ways
//! and no test saw it, as no scenario wrote more than a few hundred
//! scattered pages between two ACKs.

use std::ops::Range;
use std::time::Duration;

use memfd_tripwire::{Backend, blocking::Tripwire};

mod support;
use support::{scaled, with_producer};

/// The most runs of pages one ACK's reply lists (the agent's `MAX_RANGES`).
const MAX_RANGES: usize = 2048;

/// Waits for the trip and takes it: the written pages it reports.
fn trip_pages(tw: &mut Tripwire) -> Vec<Range<usize>> {
    let mut pages = Vec::new();
    while tw
        .try_changed_with_pages(&mut pages)
        .expect("take the trip")
        .is_none()
    {
        tw.wait_ready(Some(scaled(Duration::from_secs(10))))
            .expect("wait");
    }
    pages
}

/// Writes `runs` pages with a page between each (so that none merge),
/// while the wire stays tripped, then takes the trip: the ranges it
/// reports, and the region's length. `None` where Userfault is missing.
fn scattered(runs: usize) -> Option<(Vec<Range<usize>>, usize)> {
    let page = rustix::param::page_size();
    let len = (2 * runs + 1) * page;
    let created = Tripwire::builder(len).backend(Backend::Userfault).create();
    let tw = support::or_skip("userfault", created)?;
    let (mut tw, producer) = with_producer(tw);
    for i in 0..runs {
        producer.region().write(2 * i * page, &1u8).expect("store");
    }
    Some((trip_pages(&mut tw), len))
}

#[test]
fn userfault_reports_each_run_a_reply_can_list() {
    let Some((pages, _)) = scattered(MAX_RANGES) else {
        return;
    };
    let page = rustix::param::page_size();
    let expected: Vec<_> = (0..MAX_RANGES)
        .map(|i| 2 * i * page..(2 * i + 1) * page)
        .collect();
    assert_eq!(pages.len(), expected.len(), "runs reported");
    assert!(pages == expected, "the written pages, exactly");
}

#[test]
fn userfault_reports_the_whole_region_past_what_a_reply_lists() {
    let Some((pages, len)) = scattered(MAX_RANGES + 1) else {
        return;
    };
    assert_eq!(pages, vec![0..len], "one range: the whole region");
}

/// Two producers' pages, reported together: sorted, and merged where they
/// touch, as `try_changed_with_pages` promises ("merged where they
/// touch"). Each agent lists only its own pages, so the merge across
/// replies is the consumer's (`push_range`, whose merge a surviving
/// cargo-mutants mutant could remove unseen).
#[test]
fn userfault_merges_touching_pages_of_two_producers() {
    let page = rustix::param::page_size();
    let len = 4 * page;
    let created = Tripwire::builder(len).backend(Backend::Userfault).create();
    let Some(tw) = support::or_skip("userfault", created) else {
        return;
    };
    let (tw, a) = with_producer(tw);
    let (mut tw, b) = with_producer(tw);
    tw.ack().expect("ack");
    a.region().write(0, &1u8).expect("store");
    a.region().write(3 * page, &1u8).expect("store");
    b.region().write(page, &1u8).expect("store");
    assert_eq!(trip_pages(&mut tw), vec![0..2 * page, 3 * page..4 * page]);
}
