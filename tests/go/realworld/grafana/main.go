// Command tether-grafana-datasource is a small Grafana backend data source of tether's
// own, written on Grafana's grafana-plugin-sdk-go and served with datasource.Manage exactly
// as Grafana's backend plugins are. tether's end-to-end tests (tests/e2e/interop_real.rs)
// start it the way Grafana does and call its health check.
//
// Its health check reads the data source's JSON settings: {"motto": "..."} makes it
// healthy, with a message that names the data source and repeats the motto; a missing
// motto makes it unhealthy and says so.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
	"github.com/grafana/grafana-plugin-sdk-go/backend/datasource"
	"github.com/grafana/grafana-plugin-sdk-go/backend/instancemgmt"
	"github.com/grafana/grafana-plugin-sdk-go/backend/log"
)

type settings struct {
	Motto string `json:"motto"`
}

type tetherDatasource struct {
	name     string
	settings settings
}

func newDatasource(_ context.Context, s backend.DataSourceInstanceSettings) (instancemgmt.Instance, error) {
	var parsed settings
	if len(s.JSONData) > 0 {
		if err := json.Unmarshal(s.JSONData, &parsed); err != nil {
			return nil, fmt.Errorf("the data source's JSON settings are not valid: %w", err)
		}
	}
	return &tetherDatasource{name: s.Name, settings: parsed}, nil
}

func (d *tetherDatasource) CheckHealth(ctx context.Context, _ *backend.CheckHealthRequest) (*backend.CheckHealthResult, error) {
	if d.settings.Motto == "" {
		log.DefaultLogger.FromContext(ctx).Warn("health check without a motto", "datasource", d.name)
		return &backend.CheckHealthResult{
			Status:  backend.HealthStatusError,
			Message: fmt.Sprintf("%s has no motto in its settings", d.name),
		}, nil
	}
	log.DefaultLogger.FromContext(ctx).Info("health check", "datasource", d.name)
	return &backend.CheckHealthResult{
		Status:  backend.HealthStatusOk,
		Message: fmt.Sprintf("%s is healthy: %s", d.name, d.settings.Motto),
	}, nil
}

func (d *tetherDatasource) QueryData(_ context.Context, req *backend.QueryDataRequest) (*backend.QueryDataResponse, error) {
	resp := backend.NewQueryDataResponse()
	for _, q := range req.Queries {
		resp.Responses[q.RefID] = backend.DataResponse{}
	}
	return resp, nil
}

func main() {
	if err := datasource.Manage("tether-test-datasource", newDatasource, datasource.ManageOpts{}); err != nil {
		log.DefaultLogger.Error(err.Error())
		os.Exit(1)
	}
}
