//! Idle windows: when an owner lets the machine train. A schedule of daily windows (UTC, with
//! optional days of the week) and an optional load threshold ("only while otherwise idle").

use crate::config::Availability;

/// A schedule entry that does not parse; the message names it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("availability: {0}")]
pub struct ScheduleError(pub String);

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Windows as minutes since midnight, `[start, end)`; `start > end` crosses midnight.
    windows: Vec<(u32, u32)>,
    /// Allowed days, 0 = Monday; empty: every day.
    days: Vec<u32>,
    max_other_load: f64,
}

impl Schedule {
    /// Parses the configuration; errors name the bad entry.
    pub fn parse(a: &Availability) -> Result<Self, ScheduleError> {
        Self::parse_text(a).map_err(ScheduleError)
    }

    fn parse_text(a: &Availability) -> Result<Self, String> {
        let minute = |s: &str| -> Result<u32, String> {
            let (h, m) = s.trim().split_once(':').ok_or_else(|| format!("{s:?} is not HH:MM"))?;
            let (h, m): (u32, u32) = (
                h.parse().map_err(|_| format!("bad hour in {s:?}"))?,
                m.parse().map_err(|_| format!("bad minute in {s:?}"))?,
            );
            if h > 24 || m > 59 || (h == 24 && m > 0) {
                return Err(format!("{s:?} is not a time of day"));
            }
            Ok(h * 60 + m)
        };
        let windows = a
            .windows
            .iter()
            .map(|w| {
                let (s, e) =
                    w.split_once('-').ok_or_else(|| format!("window {w:?} is not HH:MM-HH:MM"))?;
                Ok((minute(s)?, minute(e)?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let days = a
            .days
            .iter()
            .map(|d| {
                let d3: String = d.to_ascii_lowercase().chars().take(3).collect();
                NAMES
                    .iter()
                    .position(|n| *n == d3)
                    .map(|i| i as u32)
                    .ok_or_else(|| format!("unknown day {d:?} (use mon ... sun)"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if a.max_other_load < 0.0 || !a.max_other_load.is_finite() {
            return Err("max_other_load must be a non-negative number".into());
        }
        Ok(Schedule { windows, days, max_other_load: a.max_other_load })
    }

    /// True if the schedule allows training at `unix_secs` (UTC) with `other_load` (the load
    /// average not caused by this miner; `None` when unknown, which never blocks).
    pub fn allows(&self, unix_secs: u64, other_load: Option<f64>) -> bool {
        let day_index = unix_secs / 86_400;
        let minute = (unix_secs % 86_400 / 60) as u32;
        // 1970-01-01 was a Thursday (index 3 with Monday = 0).
        let weekday = ((day_index + 3) % 7) as u32;
        let yesterday = (weekday + 6) % 7;
        let day_ok = |d: u32| self.days.is_empty() || self.days.contains(&d);
        let in_window = self.windows.is_empty()
            || self.windows.iter().any(|&(s, e)| {
                if s <= e {
                    (s..e).contains(&minute) && day_ok(weekday)
                } else {
                    // Crosses midnight: the part after midnight belongs to yesterday's window.
                    (minute >= s && day_ok(weekday)) || (minute < e && day_ok(yesterday))
                }
            });
        let windows_days_ok = !self.windows.is_empty() || day_ok(weekday);
        let load_ok =
            self.max_other_load == 0.0 || other_load.is_none_or(|l| l < self.max_other_load);
        in_window && windows_days_ok && load_ok
    }
}

/// The 1-minute load average (Linux `/proc/loadavg`; `None` elsewhere).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: u64, h: u64, m: u64) -> u64 {
        // 2026-11-30 is a Monday: day 20,787 since 1970-01-01.
        (20_787 + day) * 86_400 + h * 3600 + m * 60
    }

    #[test]
    fn windows_days_and_load() {
        let always = Schedule::parse(&Availability::default()).unwrap();
        assert!(always.allows(at(0, 12, 0), Some(50.0)));

        let nights = Schedule::parse(&Availability {
            windows: vec!["22:00-06:30".into()],
            days: vec!["fri".into(), "Saturday".into()],
            max_other_load: 1.5,
            ..Availability::default()
        })
        .unwrap();
        assert!(!nights.allows(at(4, 21, 59), None), "Friday before the window");
        assert!(nights.allows(at(4, 22, 0), None), "Friday night");
        assert!(nights.allows(at(5, 6, 29), Some(0.5)), "Saturday morning, Friday's window");
        assert!(!nights.allows(at(5, 6, 30), None), "window ended");
        assert!(nights.allows(at(6, 3, 0), None), "Sunday early: Saturday's window");
        assert!(!nights.allows(at(0, 3, 0), None), "Monday early: Sunday's window is off");
        assert!(!nights.allows(at(4, 23, 0), Some(2.0)), "the owner is using the machine");

        let weekdays =
            Schedule::parse(&Availability { days: vec!["mon".into()], ..Availability::default() })
                .unwrap();
        assert!(weekdays.allows(at(0, 10, 0), None));
        assert!(!weekdays.allows(at(1, 10, 0), None));

        for (w, d) in [("25:00-01:00", ""), ("10-11", ""), ("10:00-11:00", "someday")] {
            let a = Availability {
                windows: vec![w.into()],
                days: if d.is_empty() { vec![] } else { vec![d.into()] },
                ..Availability::default()
            };
            assert!(Schedule::parse(&a).is_err(), "{w} {d}");
        }
    }
}
