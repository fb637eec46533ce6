// Command devstack runs Switchboard on a laptop: an embedded NATS server with
// JetStream plus the gateway, auth, presence and timer services in one
// process (with -profile=echo: the gateway without auth, presence and the
// echo service, the Socket.IO protocol test target). Its subcommands mint
// development tokens and publish notifications:
//
//	devstack [flags]                       run the stack (see -h)
//	devstack -profile=echo [flags]         run the protocol test profile
//	devstack token <uid> [-ttl 24h]        print a development JWT for uid
//	devstack notify -user U -event E JSON  deliver an event (see notify -h)
//	devstack bench [flags] all             the load tool (see bench -h)
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/pkg/config"
	"github.com/switchboard-rt/switchboard/services/devstack/devstack"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 {
		switch args[0] {
		case "token":
			os.Exit(cmdToken(args[1:], os.Stdout, os.Stderr))
		case "notify":
			os.Exit(cmdNotify(args[1:], os.Getenv("SB_NATS_URL"), os.Stdout, os.Stderr))
		case "bench":
			os.Exit(cmdBench(args[1:], os.Stdout, os.Stderr))
		}
	}
	cfg, log, rest, err := loadConfig(args, os.Environ(), os.Stderr)
	if err != nil {
		if config.IsHelp(err) {
			fmt.Fprintln(os.Stderr, "\nsubcommands: token <uid> [-ttl 24h], notify (see devstack notify -h), bench (see devstack bench -h)")
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(2)
	}
	if len(rest) > 0 {
		fmt.Fprintf(os.Stderr, "devstack: unknown command %q (want token, notify or bench)\n", rest[0])
		os.Exit(2)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log, cfg); err != nil {
		log.Error("devstack failed", "err", err)
		stop()
		os.Exit(1)
	}
}

// loadConfig loads the configuration in two passes: the first finds the
// profile (flag -profile, SB_PROFILE or the YAML file), the second loads
// every setting over that profile's defaults, so explicit settings win over
// the profile's.
func loadConfig(args, environ []string, out io.Writer) (devstack.Config, *slog.Logger, []string, error) {
	probe := devstack.DefaultConfig()
	cfg := devstack.DefaultConfig()
	if _, err := config.Load(&probe, "devstack", args, environ, io.Discard); err == nil {
		if pc, err := devstack.ProfileConfig(probe.Profile); err == nil {
			cfg = pc
		}
		// An unknown profile fails in Validate, after the second pass.
	}
	log, rest, err := boot.Init("devstack", &cfg, &cfg.Log, args, environ, out)
	return cfg, log, rest, err
}

// run starts the stack, prints how to use it and stops it gracefully when
// ctx ends.
func run(ctx context.Context, log *slog.Logger, cfg devstack.Config) error {
	return serve(ctx, log, cfg, os.Stdout)
}

func serve(ctx context.Context, log *slog.Logger, cfg devstack.Config, out io.Writer) error {
	// The services live until the stack stops them in order, not until the
	// signal arrives.
	st, err := devstack.Start(context.WithoutCancel(ctx), log, cfg)
	if err != nil {
		return err
	}
	if err := printBanner(out, st, cfg); err != nil {
		log.Warn("print banner", "err", err)
	}
	<-ctx.Done()
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := st.Stop(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}

// printBanner tells the developer where everything is. The lines starting
// with "nats:" and "socket.io:" are stable (scripts read them).
func printBanner(w io.Writer, st *devstack.Stack, cfg devstack.Config) error {
	var err error
	p := func(format string, a ...any) {
		if err == nil {
			_, err = fmt.Fprintf(w, format+"\n", a...)
		}
	}
	p("switchboard devstack is running (Ctrl-C to stop)")
	p("nats: %s", st.NATSURL())
	if a := st.OpsAddr(); a != nil {
		p("metrics: http://%s/metrics (and /healthz, /readyz)", a)
	}
	addr := st.GatewayAddr()
	if addr == nil {
		p("socket.io: none (no gateway in services)")
		return err
	}
	url := "http://localhost:" + portOf(addr)
	p("socket.io: %s", url)
	natsFlag := ""
	if st.NATSURL() != defaultNATSURL {
		natsFlag = " -s " + st.NATSURL()
	}
	if st.Profile() == devstack.ProfileEcho {
		g := cfg.Gateway
		p("profile: echo (auth disabled, no connections events, ping %d/%d ms, connect timeout %d ms, namespaces %s)",
			g.PingInterval.Milliseconds(), g.PingTimeout.Milliseconds(), g.ConnectTimeout.Milliseconds(), strings.Join(g.Namespaces, ", "))
		p("")
		p("socket.io-client: io(%q, {auth: {token: \"123\"}}).onAny((event, ...args) => console.log(event, ...args));", url)
		p("echo service:     on connect it emits \"auth\" with the auth payload; \"message\" -> \"message-back\" with the same arguments; \"message-with-ack\" is acked with them")
		p("notify a socket:  nats pub sb.out.conn.<socket id> '\"hello\"' -H Sb-Event:greeting%s", natsFlag)
		p("              or: bin/devstack notify -nats %s -conn <socket id> -event greeting '\"hello\"'", st.NATSURL())
		return err
	}
	p("")
	p("get a token:      make token USER=alice    (or: bin/devstack token alice)")
	p("socket.io-client: io(%q, {transports: [\"websocket\"], auth: {token: \"<token>\"}}).onAny((event, ...args) => console.log(event, ...args));", url)
	p("notify alice:     nats pub sb.out.user.alice '\"hello\"' -H Sb-Event:greeting%s", natsFlag)
	p("              or: bin/devstack notify -nats %s -user alice -event greeting '\"hello\"'", st.NATSURL())
	return err
}

func portOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return strconv.Itoa(ta.Port)
	}
	_, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return port
}
