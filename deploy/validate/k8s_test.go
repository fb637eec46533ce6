package validate

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// rendered is the typed output of one kustomization.
type rendered struct {
	deployments  []*appsv1.Deployment
	statefulsets []*appsv1.StatefulSet
	jobs         []*batchv1.Job
	services     []*corev1.Service
	secrets      map[string]*corev1.Secret
	configMaps   map[string]*corev1.ConfigMap
	pdbs         []*policyv1.PodDisruptionBudget
	hpas         []*autoscalingv2.HorizontalPodAutoscaler
	namespaces   []*corev1.Namespace
}

// render runs kustomize on dir, as `kubectl kustomize` does, and decodes
// every object strictly (unknown or duplicate fields fail) into its typed
// Kubernetes API struct.
func render(t *testing.T, dir string) *rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{appsv1.AddToScheme, corev1.AddToScheme, batchv1.AddToScheme, policyv1.AddToScheme, autoscalingv2.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	dec := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true, Strict: true})
	r := &rendered{secrets: map[string]*corev1.Secret{}, configMaps: map[string]*corev1.ConfigMap{}}
	for _, res := range m.Resources() {
		y, err := res.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := dec.Decode(y, nil, nil)
		if err != nil {
			t.Fatalf("%s %s: %v", res.GetKind(), res.GetName(), err)
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			r.deployments = append(r.deployments, o)
		case *appsv1.StatefulSet:
			r.statefulsets = append(r.statefulsets, o)
		case *batchv1.Job:
			r.jobs = append(r.jobs, o)
		case *corev1.Service:
			r.services = append(r.services, o)
		case *corev1.Secret:
			r.secrets[o.Name] = o
		case *corev1.ConfigMap:
			r.configMaps[o.Name] = o
		case *policyv1.PodDisruptionBudget:
			r.pdbs = append(r.pdbs, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			r.hpas = append(r.hpas, o)
		case *corev1.Namespace:
			r.namespaces = append(r.namespaces, o)
		default:
			t.Fatalf("unexpected kind %T", obj)
		}
	}
	return r
}

var dirs = []string{"../k8s/base", "../k8s/overlays/dev"}

// Both the base and the dev overlay render, and hold the whole topology.
func TestK8sTopology(t *testing.T) {
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			r := render(t, dir)
			var names []string
			for _, d := range r.deployments {
				names = append(names, d.Name)
			}
			slices.Sort(names)
			if !slices.Equal(names, []string{"auth", "gateway", "presence", "timer"}) {
				t.Errorf("deployments %v", names)
			}
			if len(r.statefulsets) != 1 || r.statefulsets[0].Name != "nats" || *r.statefulsets[0].Spec.Replicas != 3 {
				t.Fatalf("want the nats StatefulSet of 3, got %d statefulsets", len(r.statefulsets))
			}
			if len(r.jobs) != 2 {
				t.Errorf("provisioning jobs %d, want 2", len(r.jobs))
			}
			if len(r.hpas) != 1 || r.hpas[0].Spec.ScaleTargetRef.Name != "gateway" || r.hpas[0].Spec.ScaleTargetRef.Kind != "Deployment" {
				t.Errorf("want an HPA for the gateway Deployment")
			}
		})
	}
}

// Every workload has probes on the ops listener, resources, a non-root
// read-only container, and a PodDisruptionBudget; pods spread over nodes.
func TestK8sWorkloads(t *testing.T) {
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			r := render(t, dir)
			type workload struct {
				name, ns string
				sel      map[string]string
				pod      corev1.PodTemplateSpec
			}
			var ws []workload
			for _, d := range r.deployments {
				ws = append(ws, workload{d.Name, d.Namespace, d.Spec.Selector.MatchLabels, d.Spec.Template})
			}
			for _, s := range r.statefulsets {
				ws = append(ws, workload{s.Name, s.Namespace, s.Spec.Selector.MatchLabels, s.Spec.Template})
			}
			for _, w := range ws {
				c := w.pod.Spec.Containers[0]
				if c.ReadinessProbe == nil || c.LivenessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet == nil {
					t.Errorf("%s: readiness and liveness probes over HTTP wanted", w.name)
				} else if w.name != "nats" && (c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz") {
					t.Errorf("%s: probes %s, %s", w.name, c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path)
				}
				if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
					t.Errorf("%s: resources %+v", w.name, c.Resources)
				}
				sc := c.SecurityContext
				if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
					t.Errorf("%s: container security context %+v", w.name, sc)
				}
				if psc := w.pod.Spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
					t.Errorf("%s: pods must run as non-root", w.name)
				}
				if len(w.pod.Spec.TopologySpreadConstraints) == 0 {
					t.Errorf("%s: no topology spread", w.name)
				}
				covered := false
				for _, p := range r.pdbs {
					sel := labels.SelectorFromSet(p.Spec.Selector.MatchLabels)
					if p.Namespace == w.ns && sel.Matches(labels.Set(w.pod.Labels)) {
						covered = true
					}
				}
				if !covered {
					t.Errorf("%s: no PodDisruptionBudget", w.name)
				}
				if !labels.SelectorFromSet(w.sel).Matches(labels.Set(w.pod.Labels)) {
					t.Errorf("%s: selector does not match its pods", w.name)
				}
			}
			for _, d := range r.deployments {
				if d.Name == "gateway" {
					if g := d.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g < 20 {
						t.Errorf("gateway terminationGracePeriodSeconds %v: want more than the drain", g)
					}
				}
			}
		})
	}
}

// References resolve: every secret key and config map a pod uses exists
// (in the overlay, which provides the secrets), and the NATS config map
// holds the shipped files unchanged.
func TestK8sReferences(t *testing.T) {
	r := render(t, "../k8s/overlays/dev")
	pods := map[string]corev1.PodSpec{}
	for _, d := range r.deployments {
		pods[d.Name] = d.Spec.Template.Spec
	}
	for _, s := range r.statefulsets {
		pods[s.Name] = s.Spec.Template.Spec
	}
	for _, j := range r.jobs {
		pods[j.Name] = j.Spec.Template.Spec
	}
	for name, pod := range pods {
		for _, c := range pod.Containers {
			for _, e := range c.Env {
				if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
					continue
				}
				ref := e.ValueFrom.SecretKeyRef
				sec, ok := r.secrets[ref.Name]
				if !ok {
					t.Errorf("%s: secret %s missing", name, ref.Name)
					continue
				}
				if _, ok := sec.Data[ref.Key]; !ok {
					t.Errorf("%s: secret %s lacks key %s", name, ref.Name, ref.Key)
				}
			}
		}
		for _, v := range pod.Volumes {
			if v.ConfigMap != nil {
				if _, ok := r.configMaps[v.ConfigMap.Name]; !ok {
					t.Errorf("%s: config map %s missing", name, v.ConfigMap.Name)
				}
			}
		}
	}
	var natsConf *corev1.ConfigMap
	for n, cm := range r.configMaps {
		if strings.HasPrefix(n, "nats-config") {
			natsConf = cm
		}
	}
	if natsConf == nil {
		t.Fatal("no nats-config config map")
	}
	for _, f := range []string{"nats-server.conf", "cluster.conf"} {
		want, err := os.ReadFile(filepath.Join(root, "deploy", "nats", f))
		if err != nil {
			t.Fatal(err)
		}
		if natsConf.Data[f] != string(want) {
			t.Errorf("deploy/k8s/base/nats/%s differs from deploy/nats/%s", f, f)
		}
	}
	for _, ns := range r.namespaces {
		if ns.Name != "switchboard-dev" {
			t.Errorf("namespace %s", ns.Name)
		}
	}
}

// The Switchboard containers' settings are ones their binaries know, the
// same way as for the compose file: `<binary> health` with the container's
// environment and arguments fails only because nothing answers.
func TestK8sServiceSettings(t *testing.T) {
	r := render(t, "../k8s/overlays/dev")
	type ctr struct {
		name string
		c    corev1.Container
	}
	var cs []ctr
	for _, d := range r.deployments {
		cs = append(cs, ctr{d.Name, d.Spec.Template.Spec.Containers[0]})
	}
	for _, j := range r.jobs {
		cs = append(cs, ctr{j.Name, j.Spec.Template.Spec.Containers[0]})
	}
	for _, x := range cs {
		t.Run(x.name, func(t *testing.T) {
			image, _, _ := strings.Cut(x.c.Image, ":")
			bin := filepath.Join(root, "bin", strings.TrimPrefix(image, "switchboard/"))
			if _, err := os.Stat(bin); err != nil {
				t.Fatalf("%s (image %s): run make build first", bin, x.c.Image)
			}
			var env []string
			vals := map[string]string{}
			for _, e := range x.c.Env {
				v := e.Value
				if e.ValueFrom != nil {
					v = "from-" + e.Name
				}
				vals[e.Name] = v
				env = append(env, e.Name+"="+v)
			}
			if urls := strings.Split(vals["SB_NATS_URL"], ","); len(urls) != 3 {
				t.Errorf("SB_NATS_URL %q: want the three nodes", vals["SB_NATS_URL"])
			}
			checkSettings(t, bin, env, x.c.Args)
		})
	}
	// The dev overlay's patch reached the gateway's allowed origins.
	for _, d := range r.deployments {
		if d.Name != "gateway" {
			continue
		}
		for _, e := range d.Spec.Template.Spec.Containers[0].Env {
			if e.Name == "SB_GATEWAY_ALLOWED_ORIGINS" && !strings.Contains(e.Value, "localhost") {
				t.Errorf("dev origins %q", e.Value)
			}
		}
	}
}
