package natstest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// childEnv carries a child server's settings (JSON) to the re-run test
// binary.
const childEnv = "NATSTEST_SERVE"

// childOpts is what a server process is started with.
type childOpts struct {
	Name        string   `json:"name"`
	Port        int      `json:"port"`
	StoreDir    string   `json:"store_dir"`
	ClusterPort int      `json:"cluster_port,omitempty"`
	Routes      []string `json:"routes,omitempty"`
}

// ServeIfChild runs a NATS server and never returns when the test binary
// was started as a server process (RunCluster); otherwise it returns at
// once. Call it first in TestMain.
func ServeIfChild() {
	raw := os.Getenv(childEnv)
	if raw == "" {
		return
	}
	var o childOpts
	if err := json.Unmarshal([]byte(raw), &o); err != nil {
		fmt.Fprintln(os.Stderr, "natstest: child options:", err)
		os.Exit(2)
	}
	opts := &server.Options{ServerName: o.Name, Host: "127.0.0.1", Port: o.Port, JetStream: true, StoreDir: o.StoreDir, NoLog: true, NoSigs: true}
	if o.ClusterPort != 0 {
		opts.Cluster = server.ClusterOpts{Name: "natstest", Host: "127.0.0.1", Port: o.ClusterPort}
		for _, r := range o.Routes {
			u, err := url.Parse(r)
			if err != nil {
				fmt.Fprintln(os.Stderr, "natstest: route:", err)
				os.Exit(2)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "natstest: new server:", err)
		os.Exit(2)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		fmt.Fprintln(os.Stderr, "natstest: server not ready")
		os.Exit(2)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	srv.Shutdown()
	srv.WaitForShutdown()
	os.Exit(0)
}

// node is one server process of a Cluster.
type node struct {
	opts childOpts
	mu   sync.Mutex
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan struct{}
}

// Cluster is a NATS cluster with JetStream of server processes (the test
// binary run again; its TestMain must call ServeIfChild), which a test can
// kill with SIGKILL and restart on the same ports and stores.
type Cluster struct {
	t     testing.TB
	nodes []*node
}

// FreePort returns a TCP port on loopback that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// RunCluster starts n server processes that form one cluster (for n = 1,
// a single server) and waits until JetStream answers; they are killed at
// cleanup.
func RunCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	routes := make([]string, n)
	for i := range n {
		c.nodes = append(c.nodes, &node{opts: childOpts{
			Name: fmt.Sprintf("n%d", i+1), Port: FreePort(t), StoreDir: t.TempDir(),
		}})
		if n > 1 {
			c.nodes[i].opts.ClusterPort = FreePort(t)
			routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", c.nodes[i].opts.ClusterPort)
		}
	}
	for _, nd := range c.nodes {
		if n > 1 {
			nd.opts.Routes = routes
		}
		c.start(nd)
	}
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			c.kill(nd)
		}
	})
	c.WaitJetStream(30 * time.Second)
	return c
}

func (c *Cluster) start(nd *node) {
	c.t.Helper()
	raw, _ := json.Marshal(nd.opts)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("natstest: start %s: %v", nd.opts.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	nd.mu.Lock()
	nd.cmd, nd.out, nd.done = cmd, out, done
	nd.mu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", nd.opts.Port)); err == nil {
			conn.Close()
			return
		}
		select {
		case <-done:
			c.t.Fatalf("natstest: %s exited: %s", nd.opts.Name, out.String())
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("natstest: %s not ready", nd.opts.Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *Cluster) kill(nd *node) {
	nd.mu.Lock()
	cmd, done := nd.cmd, nd.done
	nd.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Size is the number of nodes.
func (c *Cluster) Size() int { return len(c.nodes) }

// URL is the client URL of node i.
func (c *Cluster) URL(i int) string { return fmt.Sprintf("nats://127.0.0.1:%d", c.nodes[i].opts.Port) }

// URLs lists every node's client URL, comma-separated (a client fails
// over among them).
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.nodes))
	for i := range c.nodes {
		urls[i] = c.URL(i)
	}
	return strings.Join(urls, ",")
}

// Name is node i's server name.
func (c *Cluster) Name(i int) string { return c.nodes[i].opts.Name }

// Index is the node of a server name, or -1.
func (c *Cluster) Index(name string) int {
	for i, nd := range c.nodes {
		if nd.opts.Name == name {
			return i
		}
	}
	return -1
}

// PID is node i's process id (0 when it is not running).
func (c *Cluster) PID(i int) int {
	nd := c.nodes[i]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd == nil || nd.cmd.Process == nil {
		return 0
	}
	return nd.cmd.Process.Pid
}

// Kill kills node i with SIGKILL.
func (c *Cluster) Kill(i int) { c.kill(c.nodes[i]) }

// Restart starts node i again on its ports and store.
func (c *Cluster) Restart(i int) { c.start(c.nodes[i]) }

// Conn connects a client to every node (it fails over), closed at cleanup.
func (c *Cluster) Conn(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(c.URLs(), append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatalf("natstest: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// WaitJetStream waits until the cluster's JetStream answers (a meta leader
// is elected).
func (c *Cluster) WaitJetStream(within time.Duration) {
	c.t.Helper()
	nc := c.Conn(c.t)
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		c.t.Fatal(err)
	}
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("natstest: cluster JetStream not ready: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
