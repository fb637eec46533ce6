package load

import (
	"fmt"
	"time"

	"github.com/prometheus/procfs"
)

// Usage is a process's CPU time so far and its resident memory now.
type Usage struct {
	At  time.Time
	CPU time.Duration
	RSS int64 // bytes
}

// ReadUsage reads pid's usage from /proc.
func ReadUsage(pid int) (Usage, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return Usage{}, fmt.Errorf("process %d: %w", pid, err)
	}
	st, err := p.Stat()
	if err != nil {
		return Usage{}, fmt.Errorf("process %d stat: %w", pid, err)
	}
	return Usage{At: time.Now(), CPU: time.Duration(st.CPUTime() * float64(time.Second)), RSS: int64(st.ResidentMemory())}, nil
}

// CPUShare is the CPU used between a and b, as a percentage of one core.
func CPUShare(a, b Usage) float64 {
	wall := b.At.Sub(a.At)
	if wall <= 0 {
		return 0
	}
	return 100 * float64(b.CPU-a.CPU) / float64(wall)
}
