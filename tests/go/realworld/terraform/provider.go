package main

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/provider"
	"github.com/hashicorp/terraform-plugin-framework/provider/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/types"
)

type tetherProvider struct{}

type providerModel struct {
	Prefix types.String `tfsdk:"prefix"`
}

func newProvider() provider.Provider { return &tetherProvider{} }

func (p *tetherProvider) Metadata(_ context.Context, _ provider.MetadataRequest, resp *provider.MetadataResponse) {
	resp.TypeName = "tether"
	resp.Version = "0.1.0"
}

func (p *tetherProvider) Schema(_ context.Context, _ provider.SchemaRequest, resp *provider.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "A small provider of tether's own, for its interoperability tests.",
		Attributes: map[string]schema.Attribute{
			"prefix": schema.StringAttribute{
				Description: "Prepended to every greeting of tether_greeting.",
				Optional:    true,
			},
		},
	}
}

func (p *tetherProvider) Configure(ctx context.Context, req provider.ConfigureRequest, resp *provider.ConfigureResponse) {
	var config providerModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &config)...)
	if resp.Diagnostics.HasError() {
		return
	}
	prefix := config.Prefix.ValueString()
	resp.DataSourceData = prefix
	resp.ResourceData = prefix
}

func (p *tetherProvider) Resources(_ context.Context) []func() resource.Resource {
	return []func() resource.Resource{newNoteResource}
}

func (p *tetherProvider) DataSources(_ context.Context) []func() datasource.DataSource {
	return []func() datasource.DataSource{newGreetingDataSource}
}
