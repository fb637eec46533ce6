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
