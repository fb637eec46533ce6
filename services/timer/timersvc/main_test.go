package timersvc

import (
	"os"
	"testing"

	"github.com/switchboard-rt/switchboard/pkg/natstest"
)

// TestMain lets natstest.RunCluster run this binary as a NATS server.
func TestMain(m *testing.M) {
	natstest.ServeIfChild()
	os.Exit(m.Run())
}
