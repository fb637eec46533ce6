package timersvc

import (
	"context"
	"sync"
	"time"
)

// retryPause is the pause before failed items are tried again.
const retryPause = 200 * time.Millisecond

// retryQueue feeds queued items to one worker in batches; the items the
// worker returns go back to the front of the queue and are tried again
// after retryPause.
type retryQueue[T any] struct {
	mu    sync.Mutex
	items []T
	wake  chan struct{}
}

func newRetryQueue[T any]() *retryQueue[T] {
	return &retryQueue[T]{wake: make(chan struct{}, 1)}
}

// push queues x; it does not block.
func (q *retryQueue[T]) push(x T) {
	q.mu.Lock()
	q.items = append(q.items, x)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// run serves the queue with work until ctx ends.
func (q *retryQueue[T]) run(ctx context.Context, work func(ctx context.Context, batch []T) (retry []T)) {
	for {
		q.mu.Lock()
		batch := q.items
		q.items = nil
		q.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-q.wake:
			}
			continue
		}
		if retry := work(ctx, batch); len(retry) > 0 {
			q.mu.Lock()
			q.items = append(retry, q.items...)
			q.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-time.After(retryPause):
			}
		}
	}
}
