import json, os, numpy as np
OUT = os.environ.get('OUT', 'runs/val-samples')
rng=np.random.default_rng(0)
for V in [50,100,200,400,800]:
    rows=[]
    res={N:json.load(open(f'{OUT}/v{V}/kn-cell-{N}.json')) for N in [20,40,80,200,500,1000]}
    pos=np.array(res[20]['val_sample_positions'],float)
    B=2000
    idx=rng.integers(0,len(pos),(B,len(pos)))
    ci={}
    for N,r in res.items():
        l=np.array(r['val_sample_losses'])
        assert abs(l.sum()/pos.sum()-r['val_loss'])<1e-9, (l.sum()/pos.sum(), r['val_loss'])
        ppl=np.exp(l[idx].sum(1)/pos[idx].sum(1))
        lo,hi=np.percentile(ppl,[2.5,97.5])
        ci[N]=(r['val_ppl'],lo,hi,ppl)
    Ns=sorted(res)
    half=[ (ci[N][2]-ci[N][1])/2/ci[N][0]*100 for N in Ns]
    # adjacent differences (relative) and paired bootstrap CI of log-ratio
    diffs=[]
    for a,b in zip(Ns,Ns[1:]):
        lr=np.log(ci[b][3]/ci[a][3]); 
        diffs.append(f"{a}->{b}: {100*(ci[b][0]/ci[a][0]-1):+.1f}% (paired CI ±{100*(np.percentile(lr,97.5)-np.percentile(lr,2.5))/2:.1f}%)")
    print(f"V={V}: val tokens {int(pos.sum())+1}, CI half-width % per cell:", " ".join(f"{h:.1f}" for h in half))
    print("   ", "; ".join(diffs))
