package presencesvc

import (
	"fmt"
	"testing"
)

// BenchmarkAdmitRelease measures one admit plus one release round trip
// through the micro endpoints against an embedded JetStream server (file
// store), with `connections` events on.
func BenchmarkAdmitRelease(b *testing.B) {
	_, nc := setup(b, DefaultConfig())
	i := 0
	for b.Loop() {
		uid := fmt.Sprintf("u%d", i%100)
		sid := fmt.Sprintf("s%d", i)
		mustAdmit(b, nc, newConn(uid, sid, "gw"))
		if !release(b, nc, uid, sid) {
			b.Fatal("not released")
		}
		i++
	}
}
