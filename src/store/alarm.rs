//! The alarms of the store (issue #14), kept as etcd 3.4 keeps them: a set
//! of (member, type) pairs that ACTIVATE adds to, DEACTIVATE removes from
//! and GET lists (all, or one type). While a NOSPACE alarm is set, writes that would grow the store
//! (a Put, a Txn with a Put in a branch, a LeaseGrant) are refused with
//! etcd's `database space exceeded`, as etcd's capped applier does; reads,
//! deletes and compaction still work, so an operator can make room and
//! disarm. A CORRUPT alarm is recorded and listed but changes nothing here
//! (etcd would refuse every request; this store cannot be corrupted by a
//! disk, and refusing reads would stop a run for nothing).

use std::collections::BTreeSet;

use etcd_client::proto::PbAlarmMember;

use super::error::EtcdError;

/// `AlarmType` values of etcd's API.
pub(crate) const NOSPACE: i32 = 1;
const CORRUPT: i32 = 2;

/// The alarms raised, as (member id, alarm type).
#[derive(Debug, Default)]
pub(crate) struct Alarms {
    set: BTreeSet<(u64, i32)>,
}

impl Alarms {
    /// Raises an alarm; answers it (also when it was already raised).
    /// etcd records NONE as asked too; so do we.
    pub fn activate(&mut self, member: u64, alarm: i32) -> PbAlarmMember {
        self.set.insert((member, alarm));
        member_alarm(member, alarm)
    }

    /// Disarms an alarm; answers it, or `None` when it was not raised.
    pub fn deactivate(&mut self, member: u64, alarm: i32) -> Option<PbAlarmMember> {
        self.set
            .remove(&(member, alarm))
            .then(|| member_alarm(member, alarm))
    }

    /// The alarms of type `alarm`, or all for NONE (0), as etcd's GET.
    pub fn get(&self, alarm: i32) -> Vec<PbAlarmMember> {
        self.set
            .iter()
            .filter(|(_, a)| alarm == 0 || *a == alarm)
            .map(|(m, a)| member_alarm(*m, *a))
            .collect()
    }

    /// Refuses a write that grows the store while NOSPACE is raised.
    pub fn check_space(&self) -> Result<(), EtcdError> {
        if self.set.iter().any(|(_, a)| *a == NOSPACE) {
            return Err(EtcdError::NoSpace);
        }
        Ok(())
    }

    /// The alarms as etcd's Status lists them in `errors` (the text form
    /// of its AlarmMember message).
    pub fn errors(&self) -> Vec<String> {
        self.set
            .iter()
            .map(|(m, a)| format!("memberID:{m} alarm:{} ", alarm_name(*a)))
            .collect()
    }
}

fn member_alarm(member: u64, alarm: i32) -> PbAlarmMember {
    PbAlarmMember {
        member_id: member,
        alarm,
    }
}

fn alarm_name(a: i32) -> String {
    match a {
        0 => "NONE".to_string(),
        NOSPACE => "NOSPACE".to_string(),
        CORRUPT => "CORRUPT".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_as_etcd_keeps_them() {
        let mut al = Alarms::default();
        assert!(al.check_space().is_ok());
        al.activate(7, NOSPACE);
        al.activate(7, NOSPACE);
        al.activate(8, CORRUPT);
        assert_eq!(al.get(0).len(), 2);
        assert_eq!(al.get(CORRUPT), vec![member_alarm(8, CORRUPT)]);
        assert_eq!(al.check_space(), Err(EtcdError::NoSpace));
        assert_eq!(al.errors()[0], "memberID:7 alarm:NOSPACE ");
        assert!(al.deactivate(9, NOSPACE).is_none());
        assert!(al.deactivate(7, NOSPACE).is_some());
        assert!(al.check_space().is_ok());
    }
}
