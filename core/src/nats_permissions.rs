//! What a pool's pods may do on NATS: the subjects of their own pool and nothing else
//! (docs/security.md). The operator writes these into the pool's NATS user; everything
//! not listed is refused by the server.
//!
//! JetStream's API is subjects too (`$JS.API.<object>.<verb>.<stream>...`), so the list
//! names each verb the api and workers use on each of the pool's streams: they read,
//! publish, fetch, acknowledge and watch; they never create, change or delete a stream
//! or a durable consumer (the operator does that with its own user). The one purge
//! allowed is of the pool's own dead letters, which the api's dead-letter routes remove.

use crate::names::{PoolNames, WEBHOOK_CONSUMER};

/// Allowed subjects, as the NATS user JWT's `pub.allow` and `sub.allow` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

impl PoolNames {
    /// The prefix of every reply inbox a pool's pods create. Replies to other pools
    /// go to inboxes under their own prefix, which these pods may not subscribe to.
    pub fn inbox_prefix(&self) -> String {
        format!("_INBOX.{}", self.stream())
    }

    /// What the api and worker pods of this pool may publish and subscribe to.
    pub fn permissions(&self) -> Permissions {
        let (work, kv) = (self.stream(), format!("KV_{}", self.bucket()));
        let dead = self.dead_letter_stream();
        let inbox = format!("{}.>", self.inbox_prefix());
        let publish = vec![
            // Work, keyed work, dead letters, events and peer requests.
            format!("{}.>", self.prefix()),
            // Results: the bucket's put, create and update.
            format!("$KV.{}.>", self.bucket()),
            // Acknowledgements of pulled work (ack, nak, in progress, term).
            format!("$JS.ACK.{work}.>"),
            // Replies to peer requests of the same pool.
            inbox.clone(),
            // Whether work is still queued (by subject), and cancelling it while it is.
            format!("$JS.API.STREAM.INFO.{work}"),
            format!("$JS.API.STREAM.MSG.GET.{work}"),
            format!("$JS.API.STREAM.MSG.DELETE.{work}"),
            // The console: the work stream's latest messages and the oldest waiting one.
            format!("$JS.API.DIRECT.GET.{work}"),
            // Dead letters: listed, read, retried (then removed) and purged.
            format!("$JS.API.STREAM.INFO.{dead}"),
            format!("$JS.API.DIRECT.GET.{dead}"),
            format!("$JS.API.DIRECT.GET.{dead}.>"),
            format!("$JS.API.STREAM.MSG.DELETE.{dead}"),
            format!("$JS.API.STREAM.PURGE.{dead}"),
            // Pulling from the durable consumers the operator made.
            format!("$JS.API.CONSUMER.INFO.{work}.*"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{work}.*"),
            // Completion webhooks: pulling the bucket's writes from its one durable
            // consumer, and acknowledging them.
            format!("$JS.API.CONSUMER.INFO.{kv}.{WEBHOOK_CONSUMER}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{kv}.{WEBHOOK_CONSUMER}"),
            format!("$JS.ACK.{kv}.>"),
            // Reading results, and watching them: an ordered consumer on the bucket's
            // stream, with its flow control, made again (by name, the old one deleted)
            // after a reconnect.
            format!("$JS.API.STREAM.INFO.{kv}"),
            format!("$JS.API.DIRECT.GET.{kv}.>"),
            // The console's recent work: the bucket's latest writes, by sequence.
            format!("$JS.API.DIRECT.GET.{kv}"),
            format!("$JS.API.CONSUMER.CREATE.{kv}"),
            format!("$JS.API.CONSUMER.CREATE.{kv}.>"),
            format!("$JS.API.CONSUMER.DELETE.{kv}.*"),
            format!("$JS.FC.{kv}.>"),
        ];
        let subscribe = vec![inbox, format!("{}.peer.>", self.prefix())];
        Permissions { publish, subscribe }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, subject: &str) -> bool {
        let (mut pattern, mut subject) = (pattern.split('.'), subject.split('.'));
        loop {
            match (pattern.next(), subject.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(s)) if p == s => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    fn allowed(list: &[String], subject: &str) -> bool {
        list.iter().any(|pattern| matches(pattern, subject))
    }

    #[test]
    fn a_pool_reaches_its_own_subjects_only() {
        let a = PoolNames::new("team-a", "jobs").expect("valid");
        let b = PoolNames::new("team-b", "jobs").expect("valid");
        let id = "0123456789abcdef0123456789abcdef".parse().expect("id");
        let own = a.permissions();
        for subject in [
            a.work_subject("echo", &id),
            a.keyed_subject(2, &id, "echo"),
            a.event_subject("work", "worked", "echo"),
            a.peer_subject("jobs-worker-0"),
            format!("$KV.{}.{id}", a.bucket()),
            format!("$JS.API.STREAM.INFO.{}", a.stream()),
            format!("$JS.API.CONSUMER.MSG.NEXT.{}.workers", a.stream()),
        ] {
            assert!(allowed(&own.publish, &subject), "{subject}");
        }
        for subject in [
            b.work_subject("echo", &id),
            b.peer_subject("jobs-worker-0"),
            format!("$KV.{}.{id}", b.bucket()),
            format!("$JS.API.STREAM.INFO.{}", b.stream()),
            format!("$JS.API.CONSUMER.MSG.NEXT.{}.workers", b.stream()),
            format!("$JS.ACK.{}.workers.1.1.1.1.0", b.stream()),
            format!("{}.abc", b.inbox_prefix()),
        ] {
            assert!(!allowed(&own.publish, &subject), "{subject}");
            assert!(!allowed(&own.subscribe, &subject), "{subject}");
        }
    }

    #[test]
    fn pools_never_change_their_streams_or_consumers() {
        let names = PoolNames::new("default", "demo").expect("valid");
        let own = names.permissions();
        for verb in [
            "STREAM.CREATE",
            "STREAM.UPDATE",
            "STREAM.DELETE",
            "STREAM.PURGE",
            "CONSUMER.DURABLE.CREATE",
        ] {
            let subject = format!("$JS.API.{verb}.{}", names.stream());
            assert!(!allowed(&own.publish, &subject), "{subject}");
        }
        let delete = format!("$JS.API.CONSUMER.DELETE.{}.workers", names.stream());
        assert!(!allowed(&own.publish, &delete));
        // Only its own dead letters may be purged (by the api's dead-letter routes).
        let dead = format!("$JS.API.STREAM.PURGE.{}", names.dead_letter_stream());
        assert!(allowed(&own.publish, &dead));
        let other = PoolNames::new("default", "other").expect("valid");
        let theirs = format!("$JS.API.STREAM.PURGE.{}", other.dead_letter_stream());
        assert!(!allowed(&own.publish, &theirs));
    }

    #[test]
    fn one_pools_name_is_never_a_prefix_of_anothers_tokens() {
        // "jobs" and "jobs-2" differ in a whole token, so `wp.ns.jobs.>` does not
        // cover `wp.ns.jobs-2.…`, and stream names end where the subject token ends.
        let a = PoolNames::new("ns", "jobs").expect("valid");
        let b = PoolNames::new("ns", "jobs-2").expect("valid");
        let id = "0123456789abcdef0123456789abcdef".parse().expect("id");
        assert!(!allowed(
            &a.permissions().publish,
            &b.work_subject("x", &id)
        ));
        let info = format!("$JS.API.STREAM.INFO.{}", b.stream());
        assert!(!allowed(&a.permissions().publish, &info));
    }
}
