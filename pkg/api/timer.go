package api

import "time"

// Timer limits (CONTRACT §2.3: timerStart's dur is an integer 1..86400).
const (
	TimerMinDur = 1
	TimerMaxDur = 86400
)

// TimerTick is the payload of the `tick` event.
type TimerTick struct {
	Timer int `json:"timer"` // whole seconds remaining
}

// TimerDone is the payload of the `timerDone` event, sent once right after
// the timer's `0` tick.
type TimerDone struct {
	Timer    int    `json:"timer"` // always 0
	DeviceID string `json:"deviceId"`
	Dur      int    `json:"dur"`
}

// TimerInfo describes one active timer.
type TimerInfo struct {
	DeviceID  string    `json:"deviceId"`
	Dur       int       `json:"dur"`       // seconds the timer was started with
	Remaining int       `json:"remaining"` // whole seconds left (rounded up)
	Deadline  time.Time `json:"deadline"`  // UTC, millisecond precision
}

// TimerListRequest asks the timer service (subject.TimerListAPI) for a
// user's active timers.
type TimerListRequest struct {
	UserID string `json:"userId"`
}

// TimerListReply lists a user's active timers, ordered by device id.
type TimerListReply struct {
	Timers []TimerInfo `json:"timers"`
}

// TimerStartAck is the acknowledgement of a successful `timerStart`.
type TimerStartAck struct {
	Status string `json:"status"` // "ok"
	Timer  int    `json:"timer"`  // the dur that was started
}

// TimerListAck is the acknowledgement of `timerList`.
type TimerListAck struct {
	Status string      `json:"status"` // "ok"
	Timers []TimerInfo `json:"timers"`
}

// TimerEvent is the body of the timer events for backend services
// (subject.TimerEvent: started, stopped, done), stored in the timer events
// stream.
type TimerEvent struct {
	UserID   string    `json:"userId"`
	DeviceID string    `json:"deviceId"`
	Dur      int       `json:"dur"`
	Start    time.Time `json:"start"`    // UTC, millisecond precision
	Deadline time.Time `json:"deadline"` // UTC, millisecond precision
	// Reason, on stopped events: "stopped" (timerStop) or "replaced" (a new
	// timerStart on the same device).
	Reason string `json:"reason,omitempty"`
}

// Reasons of a stopped timer event.
const (
	TimerReasonStopped  = "stopped"
	TimerReasonReplaced = "replaced"
)

// TimerStatus is what one timer instance reports of itself (micro stats of
// switchboard-timer, in each endpoint's data).
type TimerStatus struct {
	Instance   string `json:"instance"`
	Holder     string `json:"holder"`     // this process's lease identity
	Partitions []int  `json:"partitions"` // partitions this instance drives
	Timers     int    `json:"timers"`     // timers it drives
	Members    int    `json:"members"`    // live instances it sees
	// Ticks counts the ticks this instance sent since it started, and
	// TickLateness how late they were handed to NATS: Late[i] ticks were
	// at most TickLatenessBounds[i] late, the last entry counting the rest
	// (cumulative since start, as a Prometheus histogram's buckets).
	Ticks        uint64   `json:"ticks"`
	TickLateness []uint64 `json:"tickLateness"`
}

// TickLatenessBounds are the upper bounds of TimerStatus.TickLateness.
var TickLatenessBounds = []time.Duration{
	time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond,
	50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, time.Second,
}
