"""Index-level emulation of dev/cuda/selective_scan_lab.cu (v1 and scan_pc_kernel), written line by line
from the kernels: threads as loops, phases sequentialised at the barriers, shared memory poisoned with NaN
where the kernel releases it. It checks indexing, tiling, the reduce-scatter and the output mapping against
a float64 reference (B=2, DI=256, L=64); it cannot see races, PTX semantics or timing.
Usage: python3 dev/cuda/selective_scan_lab_emu.py v1 v2 v3b v3b32 v3c   (~5 s; needs numpy)
Keep it in step with the kernels when their mapping changes."""
import numpy as np, math, sys
NS=16; LOG2E=1.4426950408889634
rng=np.random.default_rng(0)
def bf(x): # round float32 to bf16 (RNE) and back
    x=np.asarray(x,dtype=np.float32).copy(); i=x.view(np.uint32).astype(np.uint64)
    i=(i+0x7fff+((i>>16)&1))>>16; return (i.astype(np.uint32)<<16).view(np.float32)
def softplus(v): return np.where(v<=20, np.log1p(np.exp(v)), v).astype(np.float32)
def silu(v): return (v/(1+np.exp(-v))).astype(np.float32)
B,DI,L=2,256,64
u=bf(rng.normal(0,1,(B,DI,L))); dl=bf(rng.normal(0,.5,(B,DI,L))); z=bf(rng.normal(0,1,(B,DI,L)))
Bm=bf(rng.normal(0,1,(B,NS,L))); Cm=bf(rng.normal(0,1,(B,NS,L)))
A=(-np.exp(rng.uniform(-.7,1.8,(DI,NS)))).astype(np.float32); D=rng.uniform(.5,1.5,DI).astype(np.float32)
dbias=rng.uniform(-6,-2,DI).astype(np.float32)
# flat "global memory"
gu,gd,gz,gB,gC=[a.reshape(-1) for a in (u,dl,z,Bm,Cm)]
def ref():
    out=np.zeros((B,DI,L)); last=np.zeros((B,DI,NS))
    for b in range(B):
        h=np.zeros((DI,NS))
        for t in range(L):
            dt=dl[b,:,t].astype(np.float64)+dbias; dt=np.where(dt<=20,np.log1p(np.exp(dt)),dt)
            h=np.exp(dt[:,None]*A)*h+(dt*u[b,:,t])[:,None]*Bm[b,:,t][None,:]
            y=(h*Cm[b,:,t][None,:]).sum(1)+D*u[b,:,t]
            out[b,:,t]=y*z[b,:,t]/(1+np.exp(-z[b,:,t]))
        last[b]=h
    return out,last
R,RL=ref()
def check(name,out,last):
    assert not np.isnan(out).any(), name+': unwritten out'
    assert not np.isnan(last).any(), name+': unwritten last'
    e=np.abs(out.reshape(R.shape)-R)/(np.abs(R)+0.1*np.sqrt((R**2).mean())); el=np.abs(last.reshape(RL.shape)-RL)/(np.abs(RL)+0.1*np.sqrt((RL**2).mean()))
    print(f'{name}: err out {e.max():.2e} last {el.max():.2e}', 'OK' if e.max()<2e-2 and el.max()<1e-3 else 'FAIL')

def ex2(x): return np.float32(2.0)**np.float32(x)

def run_pc(CPT,TC,NSTG,BLOCKED):
    NTC=128; G=4; CH=32*CPT; TP=TC+4; RP=TC+8; VPR=TC//8
    F32_SET=4*CH*TP+2*TC*NS; RAW_STG=3*CH*RP+2*NS*RP
    out=np.full(B*DI*L,np.nan,np.float32); last=np.full(B*DI*NS,np.nan,np.float32)
    nblk=DI//CH; nchunks=L//TC
    for blk in range(B*nblk):
        b=blk//nblk; c0=(blk%nblk)*CH; row0=(b*DI+c0)*L; brow=b*NS*L
        f32=np.full(2*F32_SET,np.nan,np.float32); raw=np.full(NSTG*RAW_STG,np.nan,np.float32)
        sbias=dbias[c0:c0+CH]; sD=D[c0:c0+CH]
        # per compute thread state
        A2=np.zeros((NTC,CPT,4),np.float32); h=np.zeros((NTC,CPT,4),np.float32)
        for tid in range(NTC):
            warp,lane=divmod(tid,32); q,g=divmod(lane,4); gi=warp*8+q
            for j in range(CPT):
                base=(c0+j*32+gi)*NS+4*g
                A2[tid,j]=A.reshape(-1)[base:base+4]*np.float32(LOG2E)
        for k in range(nchunks):
            s=k%NSTG
            # producer
            ru=s*RAW_STG; rd=ru+CH*RP; rz=rd+CH*RP; rB=rz+CH*RP; rC=rB+NS*RP; t0=k*TC
            for lane in range(32):
                for v in range(lane,CH*VPR,32):
                    l,t8=v//VPR,(v%VPR)*8; o=row0+l*L+t0+t8
                    raw[ru+l*RP+t8:ru+l*RP+t8+8]=gu[o:o+8]; raw[rd+l*RP+t8:rd+l*RP+t8+8]=gd[o:o+8]; raw[rz+l*RP+t8:rz+l*RP+t8+8]=gz[o:o+8]
                for v in range(lane,NS*VPR,32):
                    n,t8=v//VPR,(v%VPR)*8; o=brow+n*L+t0+t8
                    raw[rB+n*RP+t8:rB+n*RP+t8+8]=gB[o:o+8]; raw[rC+n*RP+t8:rC+n*RP+t8+8]=gC[o:o+8]
            sdt=(k&1)*F32_SET; sdtu=sdt+CH*TP; sdu=sdtu+CH*TP; sgz=sdu+CH*TP; sB=sgz+CH*TP; sC=sB+TC*NS
            f32[sdt:sdt+F32_SET]=np.nan  # poison: everything read must be written this chunk
            for tid in range(NTC):
                for e in range(tid,CH*(TC//2),NTC):
                    l,tp=e//(TC//2),(e%(TC//2))*2
                    for m in range(2):
                        uu=raw[ru+l*RP+tp+m]; d=softplus(raw[rd+l*RP+tp+m]+sbias[l]); zz=raw[rz+l*RP+tp+m]
                        f32[sdt+l*TP+tp+m]=d; f32[sdtu+l*TP+tp+m]=d*uu; f32[sdu+l*TP+tp+m]=sD[l]*uu; f32[sgz+l*TP+tp+m]=silu(zz)
                for e in range(tid,NS*TC,NTC):
                    n,t=e%NS,e//NS
                    f32[sB+t*NS+n]=raw[rB+n*RP+t]; f32[sC+t*NS+n]=raw[rC+n*RP+t]
            raw[ru:ru+RAW_STG]=np.nan  # stage released: must not be read again
            for t in range(0,TC,8):
                yp=np.zeros((NTC,CPT,8),np.float32)
                for tid in range(NTC):
                    warp,lane=divmod(tid,32); q,g=divmod(lane,4); gi=warp*8+q
                    for kk in range(8):
                        bb=f32[sB+(t+kk)*NS+4*g:sB+(t+kk)*NS+4*g+4]; cc=f32[sC+(t+kk)*NS+4*g:sC+(t+kk)*NS+4*g+4]
                        assert (sB+(t+kk)*NS+4*g)%4==0
                        for j in range(CPT):
                            e=(j*32+gi)*TP+t+kk
                            dt=f32[sdt+e]; dtu=f32[sdtu+e]; y=np.float32(0)
                            for i in range(4):
                                h[tid,j,i]=ex2(dt*A2[tid,j,i])*h[tid,j,i]+dtu*bb[i]; y=y+h[tid,j,i]*cc[i]
                            yp[tid,j,kk]=y
                # reduce-scatter as in the code
                for tid in range(NTC):
                    warp,lane=divmod(tid,32); q,g=divmod(lane,4); gi=warp*8+q
                    for j in range(CPT):
                        # compute with shuffles
                        def a_of(tt):
                            gg=tt%4; hi=gg&2
                            res=[]
                            for i in range(4):
                                keep=yp[tt,j,4+i] if hi else yp[tt,j,i]
                                p=tt^2; gp=p%4; sendp=yp[p,j,i] if (gp&2) else yp[p,j,4+i]
                                res.append(keep+sendp)
                            return res
                        lo=g&1; a=a_of(tid); ap=a_of(tid^1)
                        r=[]
                        for i in range(2):
                            keep=a[2+i] if lo else a[i]; sendp=ap[i] if ((tid^1)%4&1) else ap[2+i]
                            r.append(keep+sendp)
                        l=j*32+gi
                        du=f32[sdu+l*TP+t+2*g:sdu+l*TP+t+2*g+2]; gz_=f32[sgz+l*TP+t+2*g:sgz+l*TP+t+2*g+2]
                        o=row0+l*L+k*TC+t+2*g
                        assert o%2==0
                        assert np.isnan(out[o:o+2]).all(), 'double write'
                        out[o]=bf((r[0]+du[0])*gz_[0]); out[o+1]=bf((r[1]+du[1])*gz_[1])
        for tid in range(NTC):
            warp,lane=divmod(tid,32); q,g=divmod(lane,4); gi=warp*8+q
            for j in range(CPT):
                o=(b*DI+c0+j*32+gi)*NS+4*g; last[o:o+4]=h[tid,j]
    return out,last

def run_v1():
    G=4;SPT=4;NT=128;CH=32;TC=64;TP=TC+1;VPR=TC//8
    out=np.full(B*DI*L,np.nan,np.float32); last=np.full(B*DI*NS,np.nan,np.float32)
    nblk=DI//CH
    for blk in range(B*nblk):
        b=blk//nblk; c0=(blk%nblk)*CH; row0=(b*DI+c0)*L; brow=b*NS*L
        su=np.full(CH*TP,np.nan,np.float32); sdt=su.copy(); sz=su.copy(); sy=su.copy(); sB=np.full(TC*NS,np.nan,np.float32); sC=sB.copy()
        def prefetch(t0):
            regs=[]
            for tid in range(NT):
                r={}
                for k in range(2):
                    v=tid+k*NT; l,t8=v//VPR,(v%VPR)*8; o=row0+l*L+t0+t8
                    r[('u',k)]=gu[o:o+8].copy(); r[('d',k)]=gd[o:o+8].copy(); r[('z',k)]=gz[o:o+8].copy()
                n,t8=tid//VPR,(tid%VPR)*8; o=brow+n*L+t0+t8
                r['b']=gB[o:o+8].copy(); r['c']=gC[o:o+8].copy(); regs.append(r)
            return regs
        A2=np.zeros((NT,4),np.float32); h=np.zeros((NT,4),np.float32)
        for tid in range(NT):
            lc,g=divmod(tid,G); c=c0+lc; A2[tid]=A[c,g*4:g*4+4]*np.float32(LOG2E)
        regs=prefetch(0)
        for t0 in range(0,L,TC):
            for tid in range(NT):
                r=regs[tid]
                for k in range(2):
                    v=tid+k*NT; l,t8=v//VPR,(v%VPR)*8
                    for i in range(8):
                        su[l*TP+t8+i]=r[('u',k)][i]; sdt[l*TP+t8+i]=softplus(r[('d',k)][i]+dbias[c0+l]); sz[l*TP+t8+i]=r[('z',k)][i]
                n,t8=tid//VPR,(tid%VPR)*8
                for i in range(8): sB[(t8+i)*NS+n]=r['b'][i]; sC[(t8+i)*NS+n]=r['c'][i]
            if t0+TC<L: regs=prefetch(t0+TC)
            for t in range(0,TC,8):
                yp=np.zeros((NT,8),np.float32)
                for tid in range(NT):
                    lc,g=divmod(tid,G)
                    for k in range(8):
                        ut=lc*TP+t+k; dt=sdt[ut]; dtu=dt*su[ut]; y=np.float32(0)
                        for i in range(4):
                            h[tid,i]=ex2(dt*A2[tid,i])*h[tid,i]+dtu*sB[(t+k)*NS+g*4+i]; y+=h[tid,i]*sC[(t+k)*NS+g*4+i]
                        yp[tid,k]=y
                ys=yp.reshape(32,4,8).sum(1)
                for lc in range(32):
                    for k in range(8): sy[lc*TP+t+k]=D[c0+lc]*su[lc*TP+t+k]+ys[lc,k]
            for tid in range(NT):
                for k in range(2):
                    v=tid+k*NT; l,t8=v//VPR,(v%VPR)*8
                    for i in range(8):
                        e=l*TP+t8+i; o=row0+l*L+t0+t8+i
                        assert np.isnan(out[o]); out[o]=bf(sy[e]*silu(sz[e]))
        for tid in range(NT):
            lc,g=divmod(tid,G); o=(b*DI+c0+lc)*NS+g*4; last[o:o+4]=h[tid]
    return out,last
which=sys.argv[1:]
if 'v1' in which: check('v1',*run_v1())
for name,cfg in [('v2',(1,32,2,False)),('v3b',(2,16,3,True)),('v3c',(4,8,3,True)),('v3b32',(2,32,2,True))]:
    if name in which: check(name,*run_pc(*cfg))
