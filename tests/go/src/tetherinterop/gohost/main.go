// gohost is tether's Go host fixture: it runs a plugin with go-plugin, drives it, and
// prints what it saw, one fact per line, for a test to check.
//
//	gohost kv <plugin>       put, get, a missing key, then Kill
//	gohost counter <plugin>  two Puts (the plugin calls back the host's AddHelper), Get, Kill
//
// It exits with status 1 on anything unexpected, saying what on stderr.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/status"

	"tetherinterop/proto"
	"tetherinterop/shared"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gohost: "+format+"\n", args...)
	os.Exit(1)
}

// adder is the host's AddHelper; it counts the calls the plugin makes.
type adder struct {
	proto.UnimplementedAddHelperServer
	calls int64
}

func (a *adder) Sum(ctx context.Context, req *proto.SumRequest) (*proto.SumResponse, error) {
	atomic.AddInt64(&a.calls, 1)
	return &proto.SumResponse{R: req.A + req.B}, nil
}

func main() {
	if len(os.Args) != 3 {
		fail("usage: gohost kv|counter <plugin>")
	}
	kind, path := os.Args[1], os.Args[2]
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig: shared.Handshake,
		Plugins: map[string]plugin.Plugin{
			"kv":      &shared.KVPlugin{},
			"counter": &shared.CounterPlugin{},
		},
		Cmd:              exec.Command(path),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:   "gohost",
			Level:  hclog.Debug,
			Output: os.Stderr,
		}),
	})
	defer client.Kill()
	rpc, err := client.Client()
	if err != nil {
		fail("starting %s: %v", path, err)
	}
	fmt.Printf("plugin pid %d\n", client.ReattachConfig().Pid)
	raw, err := rpc.Dispense(kind)
	if err != nil {
		fail("dispensing %s: %v", kind, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	switch kind {
	case "kv":
		kv := raw.(proto.KVClient)
		if _, err := kv.Put(ctx, &proto.PutRequest{Key: "greeting", Value: []byte("hello from go")}); err != nil {
			fail("put: %v", err)
		}
		got, err := kv.Get(ctx, &proto.GetRequest{Key: "greeting"})
		if err != nil {
			fail("get: %v", err)
		}
		fmt.Printf("get greeting = %s\n", got.Value)
		_, err = kv.Get(ctx, &proto.GetRequest{Key: "missing"})
		if err == nil {
			fail("get of a missing key succeeded")
		}
		fmt.Printf("get missing: %s\n", status.Code(err))
	case "counter":
		counter := raw.(*shared.CounterClient)
		helper := &adder{}
		for _, value := range []int64{3, 4} {
			if err := counter.Put(ctx, "apples", value, helper); err != nil {
				fail("put %d: %v", value, err)
			}
		}
		got, err := counter.Client.Get(ctx, &proto.CounterGetRequest{Key: "apples"})
		if err != nil {
			fail("get: %v", err)
		}
		fmt.Printf("get apples = %d\n", got.Value)
		fmt.Printf("host AddHelper calls = %d\n", atomic.LoadInt64(&helper.calls))
	default:
		fail("unknown kind %q", kind)
	}
	client.Kill()
	fmt.Printf("exited = %v\n", client.Exited())
}
