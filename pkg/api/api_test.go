package api

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func TestConnJSON(t *testing.T) {
	c := Conn{
		SocketID: "s1", UserID: "u", DeviceID: "d", IP: "10.0.0.1", UserAgent: "ua",
		CreatedAt: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC), Gateway: "gw1",
		Claims: json.RawMessage(`{"plan":"pro"}`),
	}
	b, err := json.Marshal(c.Public())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"socketId":"s1","userId":"u","deviceId":"d","ip":"10.0.0.1","userAgent":"ua","createdAt":"2024-05-06T07:08:09Z"}`
	if string(b) != want {
		t.Errorf("public conn = %s, want %s", b, want)
	}
	if c.Gateway != "gw1" || c.Claims == nil {
		t.Error("Public modified its receiver")
	}
	b, _ = json.Marshal(c)
	var back Conn
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, c) {
		t.Errorf("round trip = %+v, %v", back, err)
	}
}

func TestStatusJSON(t *testing.T) {
	b, _ := json.Marshal(ErrorStatus("Not allowed"))
	if string(b) != `{"status":"error","message":"Not allowed"}` {
		t.Errorf("ErrorStatus = %s", b)
	}
	b, _ = json.Marshal(Status{Status: "ok"})
	if string(b) != `{"status":"ok"}` {
		t.Errorf("ok status = %s", b)
	}
}

func TestSocketDigest(t *testing.T) {
	a := SocketDigest(SocketDigest(SocketDigest(0, "x"), "y"), "z")
	b := SocketDigest(SocketDigest(SocketDigest(0, "z"), "x"), "y")
	if a != b || a == 0 {
		t.Fatalf("order changes the digest: %x %x", a, b)
	}
	if SocketDigest(a, "y") != SocketDigest(SocketDigest(0, "x"), "z") {
		t.Fatal("removing an id does not undo adding it")
	}
}
