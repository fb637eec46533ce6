package subject

import (
	"errors"
	"strings"
	"testing"
	"unicode"
)

// validToken reports whether tok can stand as exactly one literal NATS
// subject token: not empty, no separator, no wildcard, no white space or
// control characters.
func validToken(tok string) bool {
	if tok == "" || tok == "*" || tok == ">" {
		return false
	}
	for _, r := range tok {
		if r == '.' || r == '*' || r == '>' || unicode.IsSpace(r) || unicode.IsControl(r) || r > unicode.MaxASCII {
			return false
		}
	}
	return true
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		id    string
		plain bool // used as it is
	}{
		{"plain", "alice", true},
		{"plain symbols", "A-z_09", true},
		{"dot", "a.b", false},
		{"star", "*", false},
		{"gt", ">", false},
		{"space", "a b", false},
		{"tab", "a\tb", false},
		{"newline", "alice\n", false},
		{"unicode", "ünï", false},
		{"emoji", "🙂🚀", false},
		{"tilde", "~x", false},
		{"looks encoded", "~YWxpY2U", false},
		{"nul", "a\x00b", false},
		{"invalid utf8", "\xff\xfe", false},
		{"plain 128", strings.Repeat("a", MaxPlainLen), true},
		{"plain 129", strings.Repeat("a", MaxPlainLen+1), false},
		{"max len", strings.Repeat("x.", MaxIDLen/2), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := Encode(tt.id)
			if err != nil {
				t.Fatalf("Encode(%q): %v", tt.id, err)
			}
			if tt.plain != (tok == tt.id) {
				t.Errorf("Encode(%q) = %q, want plain=%v", tt.id, tok, tt.plain)
			}
			if !tt.plain && !strings.HasPrefix(tok, "~") {
				t.Errorf("Encode(%q) = %q, want ~ prefix", tt.id, tok)
			}
			if !validToken(tok) {
				t.Errorf("Encode(%q) = %q is not a single literal token", tt.id, tok)
			}
			got, err := Decode(tok)
			if err != nil || got != tt.id {
				t.Errorf("Decode(%q) = %q, %v; want %q", tok, got, err, tt.id)
			}
		})
	}
}

func TestEncodeKnownForms(t *testing.T) {
	for id, want := range map[string]string{
		"a.b":   "~YS5i",
		"alice": "alice",
		"*":     "~Kg",
		">":     "~Pg",
	} {
		if got, err := Encode(id); err != nil || got != want {
			t.Errorf("Encode(%q) = %q, %v; want %q", id, got, err, want)
		}
	}
}

func TestEncodeRejects(t *testing.T) {
	for name, id := range map[string]string{
		"empty":    "",
		"1025":     strings.Repeat("a", MaxIDLen+1),
		"1025 enc": strings.Repeat(".", MaxIDLen+1),
	} {
		if tok, err := Encode(id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("%s: Encode = %q, %v; want ErrInvalidID", name, tok, err)
		}
	}
	if _, err := Encode(strings.Repeat("a", MaxIDLen)); err != nil {
		t.Errorf("Encode of %d bytes: %v", MaxIDLen, err)
	}
}

func TestDecodeRejects(t *testing.T) {
	long, _ := Encode(strings.Repeat(".", MaxIDLen))
	tests := map[string]string{
		"empty":               "",
		"bare mark":           "~",
		"dot":                 "a.b",
		"space":               "a b",
		"star":                "*",
		"plain 129":           strings.Repeat("a", MaxPlainLen+1),
		"encoded plain id":    "~YWxpY2U", // "alice" has a single form: alice
		"bad base64":          "~!!",
		"padding":             "~YS5i==",
		"std alphabet":        "~+/+/",
		"non-zero trail bits": "~YS5", // "a." is ~YS4
		"newline inside":      "~YS\n4",
		"carriage return":     "~YS4\r",
		"one char":            "~Y",
		"too long":            long + "AAAA",
	}
	for name, tok := range tests {
		if id, err := Decode(tok); !errors.Is(err, ErrInvalidID) {
			t.Errorf("%s: Decode(%q) = %q, %v; want ErrInvalidID", name, tok, id, err)
		}
	}
	if id, err := Decode(long); err != nil || len(id) != MaxIDLen {
		t.Errorf("Decode of a %d-byte id: %d bytes, %v", MaxIDLen, len(id), err)
	}
}

// crafted are ids an attacker might pick to reach another user's subject or
// inject wildcards.
var crafted = []string{
	"bob", "a.b", "*", ">", "alice.>", "alice *", "alice", " alice", "alice ",
	"alice\n", "alice\t", "alice\r\n", "ünï", "🙂", "~YWxpY2U", "~Ym9i", "Ym9i",
	"bob.", ".bob", "bob\x00", "bob.*", "sb.out.user.bob", "~", "~~", "b\u200bob",
	"BOB", "bob\u0301", strings.Repeat("b", MaxPlainLen+1), "a.b.c", "..", "a..b",
}

func TestDeliverySubjectsAreSafe(t *testing.T) {
	for _, id := range crafted {
		check := func(kind, subj string, err error, tokens int, want Target) {
			t.Helper()
			if err != nil {
				t.Fatalf("%s(%q): %v", kind, id, err)
			}
			parts := strings.Split(subj, ".")
			if len(parts) != tokens {
				t.Errorf("%s(%q) = %q: %d tokens, want %d", kind, id, subj, len(parts), tokens)
			}
			for _, p := range parts {
				if !validToken(p) {
					t.Errorf("%s(%q) = %q: bad token %q", kind, id, subj, p)
				}
			}
			got, err := ParseOut(subj)
			if err != nil || got != want {
				t.Errorf("ParseOut(%q) = %+v, %v; want %+v", subj, got, err, want)
			}
		}
		s, err := OutUser(id)
		check("OutUser", s, err, 4, Target{Kind: "user", UserID: id})
		s, err = OutDevice(id, id)
		check("OutDevice", s, err, 5, Target{Kind: "device", UserID: id, DeviceID: id})
		s, err = OutDevice("alice", id)
		check("OutDevice", s, err, 5, Target{Kind: "device", UserID: "alice", DeviceID: id})
		s, err = OutConn(id)
		check("OutConn", s, err, 4, Target{Kind: "conn", SocketID: id})
	}
}

func TestCraftedIDsNeverReachAnotherUser(t *testing.T) {
	victim, err := OutUser("bob")
	if err != nil {
		t.Fatal(err)
	}
	if victim != "sb.out.user.bob" {
		t.Fatalf("OutUser(bob) = %q", victim)
	}
	seen := map[string]string{}
	for _, id := range crafted {
		s, err := OutUser(id)
		if err != nil {
			t.Fatalf("OutUser(%q): %v", id, err)
		}
		if s == victim && id != "bob" {
			t.Errorf("crafted id %q yields the victim's subject %q", id, s)
		}
		if other, ok := seen[s]; ok && other != id {
			t.Errorf("ids %q and %q share subject %q", id, other, s)
		}
		seen[s] = id
	}

	// Device subjects: every (user, device) pair maps to its own subject.
	pairs := [][2]string{
		{"a", "b.c"}, {"a.b", "c"}, {"a", "b"}, {"a.b", "c.d"}, {"a", "b.c.d"},
		{"a.b.c", "d"}, {"a", "*"}, {"a", ">"}, {"a.*", "b"}, {"a b", "c"}, {"a", "b c"},
	}
	devs := map[string][2]string{}
	for _, p := range pairs {
		s, err := OutDevice(p[0], p[1])
		if err != nil {
			t.Fatalf("OutDevice(%q, %q): %v", p[0], p[1], err)
		}
		if other, ok := devs[s]; ok {
			t.Errorf("OutDevice%q and OutDevice%q share subject %q", p, other, s)
		}
		devs[s] = p
	}
	x, _ := OutDevice("a", "b.c")
	y, _ := OutDevice("a.b", "c")
	if x == y {
		t.Errorf("OutDevice(a, b.c) == OutDevice(a.b, c) == %q", x)
	}
}

func TestOutDeviceAll(t *testing.T) {
	s, err := OutDeviceAll("a.b")
	if err != nil || s != "sb.out.device.~YS5i.*" {
		t.Errorf("OutDeviceAll(a.b) = %q, %v", s, err)
	}
	if _, err := OutDeviceAll(""); !errors.Is(err, ErrInvalidID) {
		t.Errorf("OutDeviceAll(\"\"): %v, want ErrInvalidID", err)
	}
}

func TestBuildersRejectBadIDs(t *testing.T) {
	long := strings.Repeat("a", MaxIDLen+1)
	for name, f := range map[string]func() (string, error){
		"OutUser empty":         func() (string, error) { return OutUser("") },
		"OutDevice empty uid":   func() (string, error) { return OutDevice("", "d") },
		"OutDevice empty dev":   func() (string, error) { return OutDevice("u", "") },
		"OutDevice long":        func() (string, error) { return OutDevice("u", long) },
		"OutConn empty":         func() (string, error) { return OutConn("") },
		"In empty":              func() (string, error) { return In("") },
		"In long":               func() (string, error) { return In(long) },
		"GatewayControl empty":  func() (string, error) { return GatewayControl("", OpDisconnect) },
		"GatewayControl emptop": func() (string, error) { return GatewayControl("gw", "") },
	} {
		if s, err := f(); !errors.Is(err, ErrInvalidID) || s != "" {
			t.Errorf("%s = %q, %v; want ErrInvalidID", name, s, err)
		}
	}
}

func TestParseOut(t *testing.T) {
	good := map[string]Target{
		"sb.out.all":              {Kind: "all"},
		"sb.out.user.alice":       {Kind: "user", UserID: "alice"},
		"sb.out.user.~YS5i":       {Kind: "user", UserID: "a.b"},
		"sb.out.conn.s1":          {Kind: "conn", SocketID: "s1"},
		"sb.out.device.u.~YS5i":   {Kind: "device", UserID: "u", DeviceID: "a.b"},
		"sb.out.device.~YS5i.dev": {Kind: "device", UserID: "a.b", DeviceID: "dev"},
	}
	for subj, want := range good {
		if got, err := ParseOut(subj); err != nil || got != want {
			t.Errorf("ParseOut(%q) = %+v, %v; want %+v", subj, got, err, want)
		}
	}
	bad := []string{
		"", "sb", "sb.out", "sb.in.x", "xx.out.user.a", "sb.out.user", "sb.out.user.a.b",
		"sb.out.user.*", "sb.out.user.>", "sb.out.device.u", "sb.out.device.u.d.e",
		"sb.out.conn.~YWxpY2U", "sb.out.all.x", "sb.out.nope.a", "sb.out.user.",
		"sb.out.device.u.*", "sb.out.user.~YS5",
	}
	for _, subj := range bad {
		if got, err := ParseOut(subj); err == nil {
			t.Errorf("ParseOut(%q) = %+v, want error", subj, got)
		}
	}
}

func TestInRoundTrip(t *testing.T) {
	for _, ev := range append([]string{"timerStart", "chat:message", "a.b", "ünï", "x y"}, crafted...) {
		s, err := In(ev)
		if err != nil {
			t.Fatalf("In(%q): %v", ev, err)
		}
		parts := strings.Split(s, ".")
		if len(parts) != 3 || parts[0] != "sb" || parts[1] != "in" || !validToken(parts[2]) {
			t.Errorf("In(%q) = %q: not sb.in.<token>", ev, s)
		}
		got, err := EventFromIn(s)
		if err != nil || got != ev {
			t.Errorf("EventFromIn(%q) = %q, %v; want %q", s, got, err, ev)
		}
	}
	if s, _ := In("timerStart"); s != "sb.in.timerStart" {
		t.Errorf("In(timerStart) = %q", s)
	}
	for _, subj := range []string{"", "sb.in", "sb.in.a.b", "sb.out.x", "xx.in.a", "sb.in.*", "sb.in.~YWxpY2U", "sb.in."} {
		if ev, err := EventFromIn(subj); err == nil {
			t.Errorf("EventFromIn(%q) = %q, want error", subj, ev)
		}
	}
}

func TestGatewayControl(t *testing.T) {
	s, err := GatewayControl("gw-1", OpDisconnect)
	if err != nil || s != "sb.gw.gw-1.disconnect" {
		t.Errorf("GatewayControl = %q, %v", s, err)
	}
	s, err = GatewayControl("gw.*", OpDisconnect)
	if err != nil || strings.Count(s, ".") != 3 || strings.ContainsAny(s, "*>") {
		t.Errorf("GatewayControl(gw.*) = %q, %v", s, err)
	}
}

func TestEngineRequest(t *testing.T) {
	s, err := EngineRequest("eng_1")
	if err != nil || s != "sb.engine.eng_1" {
		t.Errorf("EngineRequest = %q, %v", s, err)
	}
	for _, id := range crafted {
		s, err := EngineRequest(id)
		if err != nil {
			t.Fatalf("EngineRequest(%q): %v", id, err)
		}
		parts := strings.Split(s, ".")
		if len(parts) != 3 || !validToken(parts[2]) {
			t.Errorf("EngineRequest(%q) = %q", id, s)
		}
	}
	if _, err := EngineRequest(""); !errors.Is(err, ErrInvalidID) {
		t.Errorf("EngineRequest(\"\"): %v", err)
	}
}

func FuzzEncode(f *testing.F) {
	for _, id := range crafted {
		f.Add(id)
	}
	f.Add("")
	f.Add(strings.Repeat("a", MaxPlainLen))
	f.Fuzz(func(t *testing.T, id string) {
		tok, err := Encode(id)
		if id == "" || len(id) > MaxIDLen {
			if !errors.Is(err, ErrInvalidID) {
				t.Fatalf("Encode(%q) = %q, %v; want ErrInvalidID", id, tok, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("Encode(%q): %v", id, err)
		}
		if !validToken(tok) {
			t.Fatalf("Encode(%q) = %q: not a single literal token", id, tok)
		}
		got, err := Decode(tok)
		if err != nil || got != id {
			t.Fatalf("Decode(Encode(%q)) = %q, %v", id, got, err)
		}
		// Decoding a token as if it came from a subject: the only token that
		// decodes to id is Encode(id).
		if back, err := Decode(id); err == nil {
			if again, _ := Encode(back); again != id {
				t.Fatalf("Decode(%q) = %q but Encode of it is %q", id, back, again)
			}
		}
	})
}

func BenchmarkSubjectEncode(b *testing.B) {
	for _, bc := range []struct{ name, id string }{
		{"plain", "user_1234567890"},
		{"encoded", "user@example.com"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Encode(bc.id); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("OutUser", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := OutUser("user@example.com"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestKeyToken(t *testing.T) {
	for _, id := range append([]string{"alice", "a.b", "~x", "ünï"}, crafted...) {
		tok, err := KeyToken(id)
		if err != nil {
			t.Fatalf("KeyToken(%q): %v", id, err)
		}
		for _, c := range tok {
			if !(c == '-' || c == '_' || c == '=' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
				t.Fatalf("KeyToken(%q) = %q holds %q", id, tok, c)
			}
		}
		back, err := IDFromKeyToken(tok)
		if err != nil || back != id {
			t.Fatalf("IDFromKeyToken(%q) = %q, %v; want %q", tok, back, err, id)
		}
	}
	if _, err := IDFromKeyToken("~YS5i"); err == nil {
		t.Fatal("a subject token is not a key token")
	}
}

func TestIsInbox(t *testing.T) {
	for subj, want := range map[string]bool{
		"_INBOX.abc":         true,
		"_INBOX.abc.def":     true,
		"_INBOX_gateway.x.y": true,
		"_INBOX_a-b_c.x":     true,
		"_INBOX":             false,
		"_INBOX.":            false,
		"_INBOX_.x":          false,
		"_INBOX_gw":          false,
		"_INBOXES.x":         false,
		"sb.in.timerStart":   false,
		"sb.out.user.bob":    false,
		"_INBOX.a..b":        false,
		"_INBOX.>":           false,
		"_INBOX.*":           false,
		"_INBOX.a b":         false,
		"x._INBOX.a":         false,
		"_INBOX_g.w.x.":      false,
	} {
		if got := IsInbox(subj); got != want {
			t.Errorf("IsInbox(%q) = %v, want %v", subj, got, want)
		}
	}
}
