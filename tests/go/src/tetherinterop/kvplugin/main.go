// kvplugin is tether's Go KV plugin fixture: an in-memory proto.KV served with go-plugin,
// logging through hclog at every level so a host can check the levels it shows.
package main

import (
	"context"
	"os"
	"sync"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"tetherinterop/proto"
	"tetherinterop/shared"
)

type store struct {
	proto.UnimplementedKVServer
	log    hclog.Logger
	mu     sync.Mutex
	values map[string][]byte
}

func (s *store) Put(ctx context.Context, req *proto.PutRequest) (*proto.Empty, error) {
	if req.Key == "" {
		s.log.Error("put with an empty key")
		return nil, status.Error(codes.InvalidArgument, "the key is empty")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.values[req.Key] = req.Value
	s.log.Info("stored a value", "key", req.Key, "bytes", len(req.Value))
	return &proto.Empty{}, nil
}

func (s *store) Get(ctx context.Context, req *proto.GetRequest) (*proto.GetResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	value, ok := s.values[req.Key]
	if !ok {
		s.log.Warn("get of a missing key", "key", req.Key)
		return nil, status.Errorf(codes.NotFound, "no such key: %q", req.Key)
	}
	s.log.Debug("read a value", "key", req.Key)
	return &proto.GetResponse{Value: value}, nil
}

func main() {
	log := hclog.New(&hclog.LoggerOptions{
		Name:       "kvplugin",
		Level:      hclog.Trace,
		Output:     os.Stderr,
		JSONFormat: true,
	})
	log.Trace("starting", "pid", os.Getpid())
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: shared.Handshake,
		Plugins: map[string]plugin.Plugin{
			"kv": &shared.KVPlugin{Impl: &store{log: log, values: map[string][]byte{}}},
		},
		GRPCServer: plugin.DefaultGRPCServer,
	})
}
