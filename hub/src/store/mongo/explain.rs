//! `explain` of the store's hot queries, exactly as the store builds them
//! (see [`super::queries`]). Prints the server's answer and checks:
//! - always: the index each query is meant for exists, and its keys cover
//!   the query's filter and sort (the equality fields first);
//! - on MongoDB: the winning plan reads an index, never the whole collection;
//! - on FerretDB (SQLite backend), which runs every query as a table scan
//!   (its SQL indexes are never used for reads): the queries that are one
//!   string `_id` equality are at least pushed down into SQL.
//!
//! `cargo test -p promhub-hub --lib store::mongo::explain -- --nocapture`

use anyhow::{Context, Result, ensure};
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use promhub_core::frames::to_payload;
use promhub_core::{Pattern, Topic};

use super::codec::{dedup_id, group_id, latest_id, topic_key_range};
use super::queries::{self, Query};
use super::test_server::FerretDb;
use super::{MongoStore, Store};
use crate::store::{CommitBatch, DeadLetter, GroupKey, GroupProgress, NewEvent};

fn event(topic: &str, key: &str, id: &str) -> Result<NewEvent> {
    Ok(NewEvent {
        id: id.to_owned(),
        client_id: true,
        topic: Topic::parse(topic)?,
        ts: 1,
        key: Some(key.to_owned()),
        payload: to_payload("x")?,
        headers: None,
        tags: None,
        caused_by: None,
        sid: None,
    })
}

/// The hot queries, with the arguments a running hub would give them.
fn hot_queries() -> Vec<(&'static str, Query)> {
    let group = GroupKey {
        pattern: "orders.*".to_owned(),
        group: "billing".to_owned(),
    };
    let (low, high) = topic_key_range("orders.eu");
    vec![
        (
            "read_after (all topics)",
            queries::events_after(10, 1000, 500),
        ),
        (
            "read_after (one topic)",
            queries::topic_events_after("orders.eu", 10, 1000, 500),
        ),
        (
            "latest_by_key page (one topic's keys)",
            queries::latest_page(Some((&low, false)), Some(&high), 256),
        ),
        (
            "latest_by_key page (after a cursor)",
            queries::latest_page(
                Some((&latest_id("orders.eu", "k1"), true)),
                Some(&high),
                256,
            ),
        ),
        (
            "latest_for_key",
            queries::latest_entry(&latest_id("orders.eu", "k1")),
        ),
        (
            "events of latest_by_key",
            queries::events_by_seq(&[1, 2, 3]),
        ),
        (
            "dedup lookup (one id)",
            queries::dedup_entries(&[&dedup_id("orders.eu", "client-1")]),
        ),
        (
            "dedup lookup (a batch of ids)",
            queries::dedup_entries(&[
                &dedup_id("orders.eu", "client-1"),
                &dedup_id("orders.us", "client-1"),
            ]),
        ),
        ("group load", queries::group(&group_id(&group))),
        ("groups page", queries::groups_after(Some(&group), 100)),
        (
            "dead letters of a group",
            queries::dead_letters_after(&group_id(&group), 0, 100),
        ),
    ]
}

/// Field names of a filter or sort document, operators excluded.
fn fields(doc: &Document) -> Vec<&str> {
    doc.keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with('$'))
        .collect()
}

/// Is `field` an equality in `filter` (not a range or `$in`)?
fn is_equality(filter: &Document, field: &str) -> bool {
    !matches!(filter.get(field), Some(Bson::Document(_)))
}

/// Every `stage` named anywhere in a MongoDB plan.
fn stages(value: &Bson, out: &mut Vec<String>) {
    match value {
        Bson::Document(doc) => {
            for (key, child) in doc {
                if let (true, Bson::String(stage)) = (key == "stage", child) {
                    out.push(stage.clone());
                }
                stages(child, out);
            }
        }
        Bson::Array(items) => items.iter().for_each(|item| stages(item, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_queries_are_served_by_indexes() -> Result<()> {
    let Some(server) = FerretDb::shared_or_skip("hot_queries_are_served_by_indexes") else {
        return Ok(());
    };
    let store = MongoStore::connect(&server.uri("explain")).await?;
    // Some data, so that every collection exists.
    let key = GroupKey {
        pattern: "orders.*".to_owned(),
        group: "billing".to_owned(),
    };
    store
        .commit(CommitBatch {
            events: vec![
                event("orders.eu", "k1", "client-1")?,
                event("orders.us", "k2", "client-2")?,
            ],
            progress: vec![GroupProgress {
                key: key.clone(),
                cursor: 1,
                done_above: vec![3],
                attempt_changes: Vec::new(),
            }],
            dead_letters: vec![DeadLetter {
                key: key.clone(),
                seq: 2,
                event_id: "e".into(),
                reason: "final".into(),
                attempts: 1,
                dead_at: 1,
            }],
            ..CommitBatch::default()
        })
        .await?;
    ensure!(
        store
            .latest_by_key(&Pattern::parse("orders.*")?)
            .await?
            .len()
            == 2
    );

    let db = &store.inner.db;
    for (name, query) in hot_queries() {
        // The intended index exists and fits the query.
        let mut indexes = db
            .collection::<Document>(query.collection)
            .list_indexes()
            .await?;
        let mut index_keys = None;
        while let Some(index) = indexes.try_next().await? {
            if index.options.and_then(|o| o.name).as_deref() == Some(query.index) {
                index_keys = Some(index.keys);
            }
        }
        let index_keys =
            index_keys.with_context(|| format!("{name}: index {} is missing", query.index))?;
        let index_fields = fields(&index_keys);
        let mut wanted: Vec<&str> = fields(&query.filter);
        // Equality fields must lead the index, then range/sort fields.
        wanted.sort_by_key(|field| !is_equality(&query.filter, field));
        for field in query.sort.as_ref().map(fields).unwrap_or_default() {
            if !wanted.contains(&field) {
                wanted.push(field);
            }
        }
        ensure!(
            index_fields.starts_with(&wanted),
            "{name}: index {} on {index_fields:?} does not serve {wanted:?}",
            query.index
        );

        let reply = db
            .run_command(doc! { "explain": query.find_command(), "verbosity": "queryPlanner" })
            .await
            .with_context(|| format!("explain {name}"))?;
        let shown = Bson::Document(reply.clone()).into_relaxed_extjson();
        println!("== {name} ({}, index {})", query.collection, query.index);
        println!(
            "   command: {}",
            Bson::Document(query.find_command()).into_relaxed_extjson()
        );
        println!("   explain: {}", shown["queryPlanner"]);
        let ferretdb = reply
            .get_document("serverInfo")
            .ok()
            .and_then(|info| info.get_str("ferretdbVersion").ok())
            .is_some();
        if ferretdb {
            let pushed = reply.get_bool("filterPushdown").unwrap_or(false);
            println!(
                "   FerretDB: filterPushdown={pushed} sortPushdown={} limitPushdown={}",
                reply.get_bool("sortPushdown").unwrap_or(false),
                reply.get_bool("limitPushdown").unwrap_or(false)
            );
            let plan = reply
                .get_document("queryPlanner")
                .and_then(|p| p.get_array("Plan"))
                .with_context(|| format!("{name}: FerretDB explain without a SQL plan"))?;
            ensure!(!plan.is_empty(), "{name}: empty SQL plan");
            // FerretDB pushes exactly one shape into SQL: a lone `_id`
            // equality on a string.
            let string_id_equality =
                query.filter.len() == 1 && matches!(query.filter.get("_id"), Some(Bson::String(_)));
            ensure!(
                pushed == string_id_equality,
                "{name}: expected filterPushdown={string_id_equality}, got {pushed}"
            );
        } else {
            let plan = reply
                .get_document("queryPlanner")
                .and_then(|p| p.get_document("winningPlan"))
                .with_context(|| format!("{name}: explain without a winning plan"))?;
            let mut seen = Vec::new();
            stages(&Bson::Document(plan.clone()), &mut seen);
            println!("   stages: {seen:?}");
            ensure!(
                !seen.iter().any(|s| s == "COLLSCAN"),
                "{name}: collection scan {seen:?}"
            );
            ensure!(
                seen.iter().any(|s| matches!(
                    s.as_str(),
                    "IXSCAN" | "IDHACK" | "EXPRESS_IXSCAN" | "EXPRESS"
                )),
                "{name}: no index stage in {seen:?}"
            );
        }
    }
    store.close().await?;
    Ok(())
}
